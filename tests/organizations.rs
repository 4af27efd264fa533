//! Behaviour of `/api/organizations/`, run against SQLite and Postgres.

mod common;

use common::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn signup_login_me_logout(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (token, session) = server.sign_up("Ada@Example.com").await;
    assert_eq!(session["user"]["email"], "ada@example.com");
    assert_eq!(session["user"]["role"], "owner");
    assert_eq!(session["organization"]["has_openai_api_key"], false);

    let (status, me) = server.get("/api/organizations/auth/me/", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["user"]["email"], "ada@example.com");
    assert_eq!(me["organization"]["id"], session["organization"]["id"]);

    let (status, login) = server
        .call(Method::POST, "/api/organizations/auth/login/", None,
            Some(json!({"email": "ada@example.com", "password": "correct horse battery"})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let second = format!("Token {}", login["token"].as_str().unwrap());
    assert_ne!(second, token);

    let (status, _) = server.call(Method::POST, "/api/organizations/auth/logout/", Some(&token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = server.get("/api/organizations/auth/me/", &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["detail"], "Invalid token.");
    let (status, _) = server.get("/api/organizations/auth/me/", &second).await;
    assert_eq!(status, StatusCode::OK);
}

async fn duplicate_email_and_wrong_password(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.sign_up("bob@example.com").await;
    let (status, body) = server
        .call(Method::POST, "/api/organizations/auth/signup/", None,
            Some(json!({"email": "BOB@example.com", "password": "another password"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["email"][0], "A user with this email already exists.");

    let (status, body) = server
        .call(Method::POST, "/api/organizations/auth/login/", None,
            Some(json!({"email": "bob@example.com", "password": "wrong password"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["non_field_errors"][0], "Unable to log in with provided credentials.");
    assert!(body.get("token").is_none());

    let (status, body) = server
        .call(Method::POST, "/api/organizations/auth/login/", None,
            Some(json!({"email": "nobody@example.com", "password": "wrong password"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["non_field_errors"][0], "Unable to log in with provided credentials.");
}

async fn signup_validation_names_fields(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, body) = server
        .call(Method::POST, "/api/organizations/auth/signup/", None, Some(json!({"email": "not-an-email", "password": "short"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["email"][0], "Enter a valid email address.");
    assert_eq!(body["password"][0], "Ensure this field has at least 8 characters.");

    let (status, body) = server
        .call(Method::POST, "/api/organizations/auth/signup/", None, Some(json!({"email": 5, "password": "long enough"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["email"][0].as_str().unwrap().contains("expected a string"), "{body}");

    let (status, body) = server
        .call(Method::POST, "/api/organizations/auth/signup/", None, Some(json!({"password": "long enough"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["email"][0], "This field is required.");

    let (status, body) = server
        .call_raw(Method::POST, "/api/organizations/auth/signup/", None, b"{\"email\": ".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap().starts_with("JSON parse error"), "{body}");

    let (status, body) = server
        .call_raw(Method::POST, "/api/organizations/auth/signup/", None, b"[1, 2]".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["non_field_errors"][0].as_str().unwrap().contains("Expected a JSON object"), "{body}");

    // Unknown fields are ignored, as in Django REST Framework.
    let (status, body) = server
        .call(Method::POST, "/api/organizations/auth/signup/", None,
            Some(json!({"email": "extra@example.com", "password": "long enough", "favourite_colour": "blue"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn oversized_body_is_413(backend: Backend) {
    let server = TestServer::start_with(backend, |s| s.max_body_bytes = 1024).await;
    let (token, _) = server.sign_up("big@example.com").await;
    let name = "x".repeat(4096);
    let (status, body) = server.post("/api/organizations/api-keys/", &token, json!({"name": name})).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body["detail"].as_str().unwrap().contains("--max-body-bytes"), "{body}");
}

async fn api_key_lifecycle(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (token, _) = server.sign_up("keys@example.com").await;
    let (status, created) = server.post("/api/organizations/api-keys/", &token, json!({"name": "ci"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let secret = created["key"].as_str().unwrap().to_string();
    let prefix = created["prefix"].as_str().unwrap();
    assert!(secret.starts_with(prefix));
    let key_id = created["id"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {secret}");

    // The key works, and last_used_at is recorded.
    let (status, me) = server.get("/api/organizations/auth/me/", &bearer).await;
    assert_eq!(status, StatusCode::OK);
    assert!(me["user"].is_null());

    let (status, list) = server.get("/api/organizations/api-keys/", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["count"], 1);
    assert_eq!(list["results"][0]["name"], "ci");
    assert_eq!(list["results"][0]["prefix"], prefix);
    assert!(list["results"][0].get("key").is_none(), "listing must not show the secret");
    assert!(!list.to_string().contains(&secret));

    let (status, renamed) = server.patch(&format!("/api/organizations/api-keys/{key_id}/"), &token, json!({"name": "deploy"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(renamed["name"], "deploy");
    let (status, body) = server
        .call(Method::PUT, &format!("/api/organizations/api-keys/{key_id}/"), Some(&token), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["name"][0], "This field is required.");

    let (status, fetched) = server.get(&format!("/api/organizations/api-keys/{key_id}/"), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched["name"], "deploy");

    let (status, _) = server.call(Method::DELETE, &format!("/api/organizations/api-keys/{key_id}/"), Some(&token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = server.get("/api/organizations/auth/me/", &bearer).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a revoked key must stop working: {body}");
    let (status, _) = server.get(&format!("/api/organizations/api-keys/{key_id}/"), &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn missing_and_malformed_credentials(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, body) = server.call(Method::GET, "/api/organizations/auth/me/", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["detail"], "Authentication credentials were not provided.");
    for header in ["Bearer", "Bearer nope", "Basic abc", "Token "] {
        let (status, _) = server.call(Method::GET, "/api/organizations/auth/me/", Some(header), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "header {header:?}");
    }
}

async fn other_organizations_objects_are_404(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (token_a, session_a) = server.sign_up("a@example.com").await;
    let (token_b, session_b) = server.sign_up("b@example.com").await;
    let org_b = session_b["organization"]["id"].as_str().unwrap();
    let user_b = session_b["user"]["id"].as_str().unwrap();
    let (_, key_b) = server.post("/api/organizations/api-keys/", &token_b, json!({"name": "b"})).await;
    let key_b_id = key_b["id"].as_str().unwrap();
    let (_, invite_b) = server.post("/api/organizations/invites/", &token_b, json!({"email": "new@example.com"})).await;
    let invite_b_id = invite_b["id"].as_str().unwrap();

    for path in [
        format!("/api/organizations/organizations/{org_b}/"),
        format!("/api/organizations/api-keys/{key_b_id}/"),
        format!("/api/organizations/members/{user_b}/"),
    ] {
        let (status, body) = server.get(&path, &token_a).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let (status, _) = server.patch(&format!("/api/organizations/organizations/{org_b}/"), &token_a, json!({"name": "stolen"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for path in [
        format!("/api/organizations/organizations/{org_b}/"),
        format!("/api/organizations/api-keys/{key_b_id}/"),
        format!("/api/organizations/members/{user_b}/"),
        format!("/api/organizations/invites/{invite_b_id}/"),
    ] {
        let (status, _) = server.call(Method::DELETE, &path, Some(&token_a), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "DELETE {path}");
    }
    // B's objects are untouched.
    let (status, org) = server.get(&format!("/api/organizations/organizations/{org_b}/"), &token_b).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(org["name"], "stolen");
    let (_, list) = server.get("/api/organizations/organizations/", &token_a).await;
    assert_eq!(list["count"], 1);
    assert_eq!(list["results"][0]["id"], session_a["organization"]["id"]);
}

async fn provider_keys_are_write_only(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (token, session) = server.sign_up("secrets@example.com").await;
    let org = session["organization"]["id"].as_str().unwrap();
    let path = format!("/api/organizations/organizations/{org}/");
    let (status, body) = server
        .patch(&path, &token, json!({"openai_api_key": "sk-openai-SECRET-1", "anthropic_api_key": "sk-ant-SECRET-2"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["has_openai_api_key"], true);
    assert_eq!(body["has_anthropic_api_key"], true);
    for (_, response) in [server.get(&path, &token).await, server.get("/api/organizations/organizations/", &token).await] {
        let text = response.to_string();
        assert!(!text.contains("SECRET"), "secret leaked: {text}");
    }
    let (_, body) = server.patch(&path, &token, json!({"openai_api_key": null})).await;
    assert_eq!(body["has_openai_api_key"], false);
    assert_eq!(body["has_anthropic_api_key"], true);

    let (status, body) = server.call(Method::PUT, &path, Some(&token), Some(json!({"anthropic_api_key": "x"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["name"][0], "This field is required.");
    let (status, body) = server.call(Method::PUT, &path, Some(&token), Some(json!({"name": "Renamed"}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["name"], "Renamed");

    // At rest the key is encrypted: the database file does not contain it.
    if backend == Backend::Sqlite {
        let mut stored = Vec::new();
        for entry in std::fs::read_dir(&server.data_dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap().to_string_lossy().starts_with("control.db") {
                stored.extend(std::fs::read(path).unwrap());
            }
        }
        assert!(!stored.is_empty());
        assert!(!String::from_utf8_lossy(&stored).contains("sk-ant-SECRET-2"));
    }
}

async fn members_keep_an_owner(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (owner, session) = server.sign_up("owner@example.com").await;
    let owner_id = session["user"]["id"].as_str().unwrap().to_string();

    let (status, invite) = server.post("/api/organizations/invites/", &owner, json!({"email": "admin@example.com", "role": "admin"})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(invite["status"], "pending");
    let (status, accepted) = server
        .call(Method::POST, &format!("/api/organizations/invites/{}/accept/", invite["id"].as_str().unwrap()), None,
            Some(json!({"password": "admin password", "name": "Admin"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{accepted}");
    assert_eq!(accepted["user"]["role"], "admin");
    assert_eq!(accepted["organization"]["id"], session["organization"]["id"]);
    let admin = format!("Token {}", accepted["token"].as_str().unwrap());
    let admin_id = accepted["user"]["id"].as_str().unwrap().to_string();

    let (_, members) = server.get("/api/organizations/members/", &owner).await;
    assert_eq!(members["count"], 2);

    // Nobody removes themself.
    let (status, body) = server.call(Method::DELETE, &format!("/api/organizations/members/{owner_id}/"), Some(&owner), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["detail"], "You cannot remove yourself from the organization.");
    // An admin cannot remove the owner.
    let (status, _) = server.call(Method::DELETE, &format!("/api/organizations/members/{owner_id}/"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // An API key (acting as an admin) cannot remove the last owner either.
    let (_, key) = server.post("/api/organizations/api-keys/", &owner, json!({"name": "k"})).await;
    let bearer = format!("Bearer {}", key["key"].as_str().unwrap());
    let (status, body) = server.call(Method::DELETE, &format!("/api/organizations/members/{owner_id}/"), Some(&bearer), None).await;
    assert!(status == StatusCode::FORBIDDEN || status == StatusCode::CONFLICT, "{status} {body}");
    let (status, member) = server.get(&format!("/api/organizations/members/{owner_id}/"), &owner).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(member["role"], "owner");

    // The owner removes the admin; the admin's token stops working.
    let (status, _) = server.call(Method::DELETE, &format!("/api/organizations/members/{admin_id}/"), Some(&owner), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server.get("/api/organizations/auth/me/", &admin).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn last_owner_cannot_be_removed(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (owner, session) = server.sign_up("solo@example.com").await;
    let owner_id = session["user"]["id"].as_str().unwrap().to_string();
    let (_, invite) = server.post("/api/organizations/invites/", &owner, json!({"email": "co@example.com", "role": "owner"})).await;
    let (status, accepted) = server
        .call(Method::POST, &format!("/api/organizations/invites/{}/accept/", invite["id"].as_str().unwrap()), None,
            Some(json!({"password": "co-owner password"})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let co_owner = format!("Token {}", accepted["token"].as_str().unwrap());
    let co_owner_id = accepted["user"]["id"].as_str().unwrap().to_string();
    // Two owners: one may remove the other.
    let (status, _) = server.call(Method::DELETE, &format!("/api/organizations/members/{owner_id}/"), Some(&co_owner), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Now the co-owner is the last owner, and an admin key cannot remove them.
    let (_, key) = server.post("/api/organizations/api-keys/", &co_owner, json!({"name": "k"})).await;
    let bearer = format!("Bearer {}", key["key"].as_str().unwrap());
    let (status, _) = server.call(Method::DELETE, &format!("/api/organizations/members/{co_owner_id}/"), Some(&bearer), None).await;
    assert_ne!(status, StatusCode::NO_CONTENT);
    let (_, members) = server.get("/api/organizations/members/", &co_owner).await;
    assert_eq!(members["count"], 1);
    assert_eq!(members["results"][0]["role"], "owner");
}

async fn invites_expire_revoke_and_single_use(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (owner, _) = server.sign_up("inviter@example.com").await;
    let accept = |id: String| {
        let server = &server;
        async move {
            server
                .call(Method::POST, &format!("/api/organizations/invites/{id}/accept/"), None,
                    Some(json!({"password": "invitee password"})))
                .await
        }
    };

    // Single use.
    let (_, invite) = server.post("/api/organizations/invites/", &owner, json!({"email": "once@example.com"})).await;
    let id = invite["id"].as_str().unwrap().to_string();
    assert_eq!(invite["role"], "member");
    assert_eq!(accept(id.clone()).await.0, StatusCode::CREATED);
    let (status, body) = accept(id).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["detail"], "This invite has already been used.");

    // Revoked.
    let (_, invite) = server.post("/api/organizations/invites/", &owner, json!({"email": "revoked@example.com"})).await;
    let id = invite["id"].as_str().unwrap().to_string();
    let (_, pending) = server.get("/api/organizations/invites/", &owner).await;
    assert_eq!(pending["count"], 1);
    let (status, _) = server.call(Method::DELETE, &format!("/api/organizations/invites/{id}/"), Some(&owner), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = accept(id).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["detail"], "This invite has been revoked.");
    let (_, pending) = server.get("/api/organizations/invites/", &owner).await;
    assert_eq!(pending["count"], 0);

    // Expired: a server whose invites live zero hours.
    let expiring = TestServer::start_with(backend, |s| s.invite_ttl_hours = 0).await;
    let (owner, _) = expiring.sign_up("late@example.com").await;
    let (_, invite) = expiring.post("/api/organizations/invites/", &owner, json!({"email": "tardy@example.com"})).await;
    let (status, body) = expiring
        .call(Method::POST, &format!("/api/organizations/invites/{}/accept/", invite["id"].as_str().unwrap()), None,
            Some(json!({"password": "invitee password"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["detail"], "This invite has expired.");

    // Unknown invite.
    let (status, _) = accept(uuid::Uuid::new_v4().to_string()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn members_cannot_manage(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (owner, session) = server.sign_up("boss@example.com").await;
    let org = session["organization"]["id"].as_str().unwrap().to_string();
    let (_, invite) = server.post("/api/organizations/invites/", &owner, json!({"email": "worker@example.com"})).await;
    let (_, accepted) = server
        .call(Method::POST, &format!("/api/organizations/invites/{}/accept/", invite["id"].as_str().unwrap()), None,
            Some(json!({"password": "worker password"})))
        .await;
    let member = format!("Token {}", accepted["token"].as_str().unwrap());
    let (status, body) = server.post("/api/organizations/api-keys/", &member, json!({"name": "x"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["detail"], "You do not have permission to perform this action.");
    let (status, _) = server.patch(&format!("/api/organizations/organizations/{org}/"), &member, json!({"name": "y"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server.call(Method::DELETE, &format!("/api/organizations/organizations/{org}/"), Some(&member), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server.get(&format!("/api/organizations/organizations/{org}/"), &member).await;
    assert_eq!(status, StatusCode::OK);
}

async fn deleted_organization_credentials_stop_working(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (owner, session) = server.sign_up("doomed@example.com").await;
    let org = session["organization"]["id"].as_str().unwrap();
    let (_, key) = server.post("/api/organizations/api-keys/", &owner, json!({"name": "k"})).await;
    let bearer = format!("Bearer {}", key["key"].as_str().unwrap());
    assert_eq!(server.get("/api/organizations/auth/me/", &bearer).await.0, StatusCode::OK);

    let (status, _) = server.call(Method::DELETE, &format!("/api/organizations/organizations/{org}/"), Some(&owner), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(server.get("/api/organizations/auth/me/", &bearer).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(server.get("/api/organizations/auth/me/", &owner).await.0, StatusCode::UNAUTHORIZED);
    // The email is free again.
    server.sign_up("doomed@example.com").await;
}

async fn site_admin_lists_every_organization(backend: Backend) {
    let server = TestServer::start_with(backend, |s| s.auth_cache_seconds = 0).await;
    let (admin, _) = server.sign_up("root@example.com").await;
    let (_, other) = server.sign_up("tenant@example.com").await;
    let (_, list) = server.get("/api/organizations/organizations/", &admin).await;
    assert_eq!(list["count"], 1);

    server.grant_admin("root@example.com").await;
    let (_, list) = server.get("/api/organizations/organizations/", &admin).await;
    assert_eq!(list["count"], 2);
    let other_org = other["organization"]["id"].as_str().unwrap();
    let (status, _) = server.get(&format!("/api/organizations/organizations/{other_org}/"), &admin).await;
    assert_eq!(status, StatusCode::OK);
}

async fn pagination_follows_drf(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (owner, _) = server.sign_up("pages@example.com").await;
    for i in 0..5 {
        server.post("/api/organizations/api-keys/", &owner, json!({"name": format!("k{i}")})).await;
    }
    let (_, page1) = server.get("/api/organizations/api-keys/?page_size=2", &owner).await;
    assert_eq!(page1["count"], 5);
    assert_eq!(page1["results"].as_array().unwrap().len(), 2);
    assert!(page1["previous"].is_null());
    let next = page1["next"].as_str().unwrap();
    assert!(next.ends_with("page_size=2&page=2"), "{next}");
    let (_, page3) = server.get("/api/organizations/api-keys/?page_size=2&page=3", &owner).await;
    assert_eq!(page3["results"].as_array().unwrap().len(), 1);
    assert!(page3["next"].is_null());
    let (status, body) = server.get("/api/organizations/api-keys/?page_size=2&page=4", &owner).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["detail"], "Invalid page.");
    let (status, body) = server.get("/api/organizations/api-keys/?page_size=5000", &owner).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["page_size"][0].as_str().unwrap().contains("1000"));
}

on_both_backends!(
    signup_login_me_logout,
    duplicate_email_and_wrong_password,
    signup_validation_names_fields,
    oversized_body_is_413,
    api_key_lifecycle,
    missing_and_malformed_credentials,
    other_organizations_objects_are_404,
    provider_keys_are_write_only,
    members_keep_an_owner,
    last_owner_cannot_be_removed,
    invites_expire_revoke_and_single_use,
    members_cannot_manage,
    deleted_organization_credentials_stop_working,
    site_admin_lists_every_organization,
    pagination_follows_drf,
);
