//! Price books per organization, cached briefly so that reads on the ingest
//! path do not query the control plane each time.
//!
//! An override written through this instance applies at once; one written
//! through another instance sharing the database applies within
//! [`PRICE_CACHE_TTL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bedrock_store::control::ControlPlane;
use bedrock_store::events::pricing::PriceBook;
use bedrock_store::StoreError;

pub const PRICE_CACHE_TTL: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Prices {
    control: ControlPlane,
    cache: Arc<Mutex<HashMap<String, (Instant, Arc<PriceBook>)>>>,
}

impl Prices {
    pub fn new(control: ControlPlane) -> Prices {
        Prices { control, cache: Arc::default() }
    }

    /// Returns the built-in prices with the organization's overrides.
    pub async fn book(&self, organization_id: &str) -> Result<Arc<PriceBook>, StoreError> {
        {
            let cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some((loaded, book)) = cache.get(organization_id) {
                if loaded.elapsed() < PRICE_CACHE_TTL {
                    return Ok(book.clone());
                }
            }
        }
        let book = Arc::new(PriceBook::new(self.control.price_overrides(organization_id).await?));
        let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.insert(organization_id.to_string(), (Instant::now(), book.clone()));
        Ok(book)
    }

    /// Returns the book for the response to a write that is already durable.
    /// While the control plane is unreachable, that is the last book loaded,
    /// however old, else the built-in prices alone: an error here would
    /// return 503 for a write that is stored, and the client would send it
    /// again.
    pub async fn book_for_write(&self, organization_id: &str) -> Result<Arc<PriceBook>, StoreError> {
        match self.book(organization_id).await {
            Err(StoreError::Unavailable(reason)) => {
                tracing::warn!(organization = organization_id, %reason, "pricing a write response without the control plane");
                let cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let stale = cache.get(organization_id).map(|(_, book)| book.clone());
                Ok(stale.unwrap_or_else(|| Arc::new(PriceBook::new(Vec::new()))))
            }
            other => other,
        }
    }

    /// Drops the cached book of an organization after its overrides changed.
    pub fn invalidate(&self, organization_id: &str) {
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(organization_id);
    }
}
