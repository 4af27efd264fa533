//! Concurrent read-then-write transactions on the SQLite control plane.
//!
//! A deferred SQLite transaction that reads and then writes fails with
//! SQLITE_BUSY at once, without waiting, when another connection commits in
//! between. The control plane begins its write transactions with
//! `BEGIN IMMEDIATE`, so these all wait their turn and succeed.

use bedrock_store::control::{Agent, ControlPlane, NewOrganization, NewUser, TransitionOutcome, TransitionRequest};
use serde_json::json;

fn agent(org_id: &str, id: &str) -> Agent {
    Agent {
        id: id.into(),
        organization_id: org_id.into(),
        name: id.into(),
        purpose: "general".into(),
        template_id: None,
        model: "gpt-4o".into(),
        system_prompt: String::new(),
        reasoning_effort: None,
        max_tokens: None,
        config: json!({}),
        adapters: json!([]),
        status: "idle".into(),
        sleep_until: None,
        sleep_reason: None,
        last_run_id: None,
        last_run_at: None,
        tags: vec![],
        created_at: 1,
        updated_at: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transitions_never_fail_with_busy() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlPlane::open_sqlite(dir.path(), 8).await.unwrap();
    control.migrate().await.unwrap();
    let org = NewOrganization { id: "org-1".into(), name: "Org".into(), now: 1 };
    let user = NewUser {
        id: "user-1".into(),
        email: "owner@example.com".into(),
        name: "Owner".into(),
        password_hash: "not a real hash".into(),
        role: "owner".into(),
    };
    control.sign_up(org, user, "token-hash").await.unwrap();
    for n in 0..4 {
        control.insert_agent(&agent("org-1", &format!("agent-{n}"))).await.unwrap();
    }

    // Each task flips its agent between idle and running and tags it, while
    // the other tasks write to the same database.
    let mut tasks = Vec::new();
    for task in 0..16 {
        let control = control.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("agent-{}", task % 4);
            let mut done = 0;
            for step in 0..10 {
                let (from, to): (&[&str], &str) =
                    if step % 2 == 0 { (&["idle"], "running") } else { (&["running"], "idle") };
                let request = TransitionRequest {
                    action: "flip",
                    from,
                    to,
                    reason: None,
                    run_id: None,
                    sleep_until: None,
                    now: 2 + step,
                };
                match control.transition_agent("org-1", &id, request).await {
                    Ok(TransitionOutcome::Done(_)) => done += 1,
                    Ok(TransitionOutcome::Refused { .. }) => {}
                    Err(bedrock_store::StoreError::Conflict(_)) => {}
                    Err(err) => panic!("task {task} step {step}: {err}"),
                }
                control.add_agent_tag("org-1", &id, &format!("t{task}-{step}"), 3).await.unwrap();
            }
            done
        }));
    }
    let mut transitions = 0;
    for task in tasks {
        transitions += task.await.unwrap();
    }
    assert!(transitions > 0);
    let mut recorded = 0;
    for n in 0..4 {
        let agent = control.agent("org-1", &format!("agent-{n}")).await.unwrap();
        assert_eq!(agent.tags.len(), 40, "every tag of agent-{n} was written");
        // The creation is a transition too.
        recorded += control.agent_transitions("org-1", &agent.id, 1000, 0).await.unwrap().count - 1;
    }
    assert_eq!(recorded, transitions, "each successful transition is recorded once");
}
