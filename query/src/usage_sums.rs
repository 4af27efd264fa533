//! Usage summaries over the typed segment columns, summed while the scan
//! streams.
//!
//! DataFusion reads, prunes and filters the segments (see [`crate::fast`]).
//! Each of its partitions then adds its records into a small map of groups
//! here, keyed by the dictionary entry of the model and by integer time
//! buckets. DataFusion's grouped aggregate would compare the model's text
//! and call a pricing function for each record. Here each model is priced
//! once per batch.
//!
//! The sums are those of [`crate::usage`]'s general plan, which the typed-plan
//! differential test compares them with: a record without a cost adds to
//! `records` but not to `priced`, and `total` tokens are input plus output.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use bedrock_store::events::pricing::{cost_of, Price, PriceBook};
use bedrock_store::events::segment;
use datafusion::arrow::array::{Array, ArrayRef, DictionaryArray, Int32Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int32Type};
use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::DataFrame;
use futures::StreamExt;

type FastHashMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The columns the summed frame must have, in any order.
pub const COLUMNS: [&str; 8] =
    ["model", "trace_id", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "cost_nanos", "timestamp"];

const DAY_MICROS: i64 = 86_400_000_000;
const HOUR_MICROS: i64 = 3_600_000_000;

/// The dimensions a summary groups by. With none, one group contains every record.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dimensions {
    pub model: bool,
    pub day: bool,
    pub hour: bool,
    pub trace: bool,
}

/// The totals of a group of records.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sums {
    pub records: i64,
    /// Input, output, cached, reasoning and total tokens.
    pub tokens: [i64; 5],
    /// The cost of the priced records, in nano-dollars.
    pub cost: i128,
    /// The records that have a cost.
    pub priced: i64,
}

impl Sums {
    pub fn add(&mut self, other: &Sums) {
        self.records = self.records.wrapping_add(other.records);
        for (sum, value) in self.tokens.iter_mut().zip(other.tokens) {
            *sum = sum.wrapping_add(value);
        }
        self.cost = self.cost.wrapping_add(other.cost);
        self.priced = self.priced.wrapping_add(other.priced);
    }
}

/// One group of a summary: its key in each grouped dimension (`None` in the
/// others, and for a record without a model or trace) and its sums. Days and
/// hours are the microsecond at their start, UTC.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub model: Option<String>,
    pub day: Option<i64>,
    pub hour: Option<i64>,
    pub trace: Option<String>,
    pub sums: Sums,
}

/// The stand-in for a null model or trace in a group key.
const ABSENT: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    model: u32,
    day: i64,
    hour: i64,
    trace: u32,
}

/// Numbers distinct texts in the order they are first seen.
#[derive(Default)]
struct Interner {
    index: FastHashMap<String, u32>,
    names: Vec<String>,
}

impl Interner {
    fn intern(&mut self, text: &str) -> u32 {
        if let Some(number) = self.index.get(text) {
            return *number;
        }
        let number = self.names.len() as u32;
        self.names.push(text.to_string());
        self.index.insert(text.to_string(), number);
        number
    }

    fn name(&self, number: u32) -> Option<String> {
        (number != ABSENT).then(|| self.names[number as usize].clone())
    }
}

/// The groups of one partition of the scan.
#[derive(Default)]
struct Partial {
    models: Interner,
    traces: Interner,
    groups: FastHashMap<Key, Sums>,
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| DataFusionError::Internal(format!("the summed frame has no column {name}")))
}

fn integers(batch: &RecordBatch, name: &str) -> Result<Int64Array> {
    let array = cast(column(batch, name)?, &DataType::Int64)?;
    array.as_any().downcast_ref::<Int64Array>().cloned().ok_or_else(|| DataFusionError::Internal(format!("{name} is not an integer")))
}

/// Returns a model column as dictionary keys and the text of each entry.
fn dictionary(array: &ArrayRef) -> Result<(Int32Array, StringArray)> {
    let array = cast(array, &segment::dictionary_type())?;
    let array = array
        .as_any()
        .downcast_ref::<DictionaryArray<Int32Type>>()
        .ok_or_else(|| DataFusionError::Internal("model is not a dictionary".into()))?;
    let values = array
        .values()
        .as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| DataFusionError::Internal("model is not text".into()))?;
    Ok((array.keys().clone(), values))
}

fn floor_to(micros: i64, size: i64) -> i64 {
    micros - micros.rem_euclid(size)
}

impl Partial {
    fn add_batch(&mut self, batch: &RecordBatch, prices: &PriceBook, dimensions: Dimensions) -> Result<()> {
        let (models, names) = dictionary(column(batch, "model")?)?;
        // Per dictionary entry: its price and its number in this partition.
        let entry_prices: Vec<Option<Price>> =
            (0..names.len()).map(|i| if names.is_null(i) { None } else { prices.lookup(names.value(i)) }).collect();
        let entry_numbers: Vec<u32> = (0..names.len())
            .map(|i| if !dimensions.model || names.is_null(i) { ABSENT } else { self.models.intern(names.value(i)) })
            .collect();
        let traces = if dimensions.trace {
            let array = cast(column(batch, "trace_id")?, &DataType::Utf8)?;
            Some(array.as_any().downcast_ref::<StringArray>().cloned().ok_or_else(|| DataFusionError::Internal("trace_id".into()))?)
        } else {
            None
        };
        let (input, output, cached, reasoning) =
            (integers(batch, "input_tokens")?, integers(batch, "output_tokens")?, integers(batch, "cached_tokens")?, integers(batch, "reasoning_tokens")?);
        let (client, at) = (integers(batch, "cost_nanos")?, integers(batch, "timestamp")?);
        let value = |array: &Int64Array, row: usize| if array.is_null(row) { 0 } else { array.value(row) };

        // Consecutive rows often share a group, so the current group stays
        // outside the map until a row of another group arrives.
        let mut last: Option<(Key, Sums)> = None;
        for row in 0..batch.num_rows() {
            let entry = (!models.is_null(row)).then(|| models.value(row) as usize);
            let (input, output, cached) = (value(&input, row), value(&output, row), value(&cached, row));
            let cost = if !client.is_null(row) {
                Some(client.value(row) as i128)
            } else {
                entry.and_then(|entry| entry_prices[entry].as_ref()).map(|price| cost_of(price, input, cached, output).0)
            };
            let micros = value(&at, row);
            let key = Key {
                model: entry.map_or(ABSENT, |entry| entry_numbers[entry]),
                day: if dimensions.day { floor_to(micros, DAY_MICROS) } else { 0 },
                hour: if dimensions.hour { floor_to(micros, HOUR_MICROS) } else { 0 },
                trace: match &traces {
                    Some(traces) if !traces.is_null(row) => self.traces.intern(traces.value(row)),
                    _ => ABSENT,
                },
            };
            let sums = match &mut last {
                Some((last_key, sums)) if *last_key == key => sums,
                slot => {
                    if let Some((last_key, sums)) = slot.take() {
                        self.groups.entry(last_key).or_default().add(&sums);
                    }
                    &mut slot.insert((key, Sums::default())).1
                }
            };
            sums.records = sums.records.wrapping_add(1);
            let tokens = [input, output, cached, value(&reasoning, row), input.wrapping_add(output)];
            for (sum, value) in sums.tokens.iter_mut().zip(tokens) {
                *sum = sum.wrapping_add(value);
            }
            if let Some(cost) = cost {
                sums.cost = sums.cost.wrapping_add(cost);
                sums.priced += 1;
            }
        }
        if let Some((key, sums)) = last {
            self.groups.entry(key).or_default().add(&sums);
        }
        Ok(())
    }
}

/// Sums the records of `frame` (with the [`COLUMNS`]) by `dimensions`,
/// pricing those without a client cost from `prices`. Each partition of the
/// scan is summed on its own task, so the partitions decode in parallel.
/// Returns the groups in no particular order; see [`sort_groups`].
pub async fn sum_groups(frame: DataFrame, prices: Arc<PriceBook>, dimensions: Dimensions) -> Result<Vec<Group>> {
    // The trace ids are long and unique: they are read only to group by them.
    let columns: Vec<&str> = COLUMNS.into_iter().filter(|name| dimensions.trace || *name != "trace_id").collect();
    let streams = frame.select_columns(&columns)?.execute_stream_partitioned().await?;
    let tasks = streams.into_iter().map(|mut stream| {
        let prices = prices.clone();
        tokio::spawn(async move {
            let mut partial = Partial::default();
            while let Some(batch) = stream.next().await {
                partial.add_batch(&batch?, &prices, dimensions)?;
            }
            Ok::<Partial, DataFusionError>(partial)
        })
    });
    let mut merged: HashMap<(Option<String>, i64, i64, Option<String>), Sums> = HashMap::new();
    for task in futures::future::join_all(tasks).await {
        let partial = task.map_err(|err| DataFusionError::External(Box::new(err)))??;
        for (key, sums) in &partial.groups {
            let name = (partial.models.name(key.model), key.day, key.hour, partial.traces.name(key.trace));
            merged.entry(name).or_default().add(sums);
        }
    }
    Ok(merged
        .into_iter()
        .map(|((model, day, hour, trace), sums)| Group {
            model,
            day: dimensions.day.then_some(day),
            hour: dimensions.hour.then_some(hour),
            trace,
            sums,
        })
        .collect())
}

/// Adds up the groups that have the same keys.
pub fn merge_groups(groups: Vec<Group>) -> Vec<Group> {
    let mut merged: HashMap<(Option<String>, Option<i64>, Option<i64>, Option<String>), Sums> = HashMap::new();
    for group in groups {
        merged.entry((group.model, group.day, group.hour, group.trace)).or_default().add(&group.sums);
    }
    merged.into_iter().map(|((model, day, hour, trace), sums)| Group { model, day, hour, trace, sums }).collect()
}

/// Sorts groups by the dimensions in `order` (`model`, `day`, `hour` or
/// `trace`), each ascending with absent keys first, as the general plan does.
pub fn sort_groups(groups: &mut [Group], order: &[&str]) {
    groups.sort_by(|a, b| {
        order
            .iter()
            .map(|dimension| match *dimension {
                "model" => a.model.cmp(&b.model),
                "day" => a.day.cmp(&b.day),
                "hour" => a.hour.cmp(&b.hour),
                "trace" => a.trace.cmp(&b.trace),
                _ => Ordering::Equal,
            })
            .find(|ordering| ordering.is_ne())
            .unwrap_or(Ordering::Equal)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_to_before_epoch() {
        assert_eq!(floor_to(DAY_MICROS + 5, DAY_MICROS), DAY_MICROS);
        assert_eq!(floor_to(-1, DAY_MICROS), -DAY_MICROS);
        assert_eq!(floor_to(-HOUR_MICROS, HOUR_MICROS), -HOUR_MICROS);
    }

    #[test]
    fn sort_groups_absent_keys_first() {
        let group = |model: Option<&str>, day: i64| Group {
            model: model.map(str::to_string),
            day: Some(day),
            hour: None,
            trace: None,
            sums: Sums::default(),
        };
        let mut groups = vec![group(Some("b"), 1), group(None, 2), group(Some("a"), 2), group(Some("a"), 1)];
        sort_groups(&mut groups, &["day", "model"]);
        let keys: Vec<(Option<&str>, Option<i64>)> = groups.iter().map(|g| (g.model.as_deref(), g.day)).collect();
        assert_eq!(keys, vec![(Some("a"), Some(1)), (Some("b"), Some(1)), (None, Some(2)), (Some("a"), Some(2))]);
        sort_groups(&mut groups, &["model", "day"]);
        let keys: Vec<(Option<&str>, Option<i64>)> = groups.iter().map(|g| (g.model.as_deref(), g.day)).collect();
        assert_eq!(keys, vec![(None, Some(2)), (Some("a"), Some(1)), (Some("a"), Some(2)), (Some("b"), Some(1))]);
    }
}
