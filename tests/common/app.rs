//! The real API router on a random port, with a fresh database and keys, for the binaries that test over HTTP.

use herald::config::Settings;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{TestDb, init_test_logging, settings};

/// A running API server on a random port, with a fresh database and one key per scope set.
#[allow(dead_code)] // not every binary uses every key, or stops the server itself
pub struct TestApp {
    pub db: TestDb,
    pub address: String,
    pub client: reqwest::Client,
    /// enqueue + read + events
    pub service_key: String,
    pub read_key: String,
    /// metrics only (what a Prometheus scrape gets)
    pub metrics_key: String,
    pub admin_key: String,
    pub shutdown: CancellationToken,
    pub server: JoinHandle<std::io::Result<()>>,
}

/// Starts the real router (the one `herald api` serves) on a random port.
#[allow(dead_code)] // some binaries always adjust the settings
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    init_test_logging();
    let db = TestDb::new().await;
    let mut settings = settings();
    adjust(&mut settings);
    use herald::api::keys::{self, Scope};
    let (service_key, _) = keys::create(
        &db.pool,
        &herald::audit::Actor::cli(),
        "service",
        &[Scope::Enqueue, Scope::Read, Scope::Events],
    )
    .await
    .unwrap();
    let (metrics_key, _) = keys::create(
        &db.pool,
        &herald::audit::Actor::cli(),
        "prometheus",
        &[Scope::Metrics],
    )
    .await
    .unwrap();
    let (read_key, _) = keys::create(
        &db.pool,
        &herald::audit::Actor::cli(),
        "reader",
        &[Scope::Read],
    )
    .await
    .unwrap();
    let (admin_key, _) = keys::create(&db.pool, &herald::audit::Actor::cli(), "admin", &Scope::ALL)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    // The API as `herald api` runs it, on this test's database.
    let app = herald::app::App::on_pool(settings, db.pool.clone()).expect("app");
    let stop = shutdown.clone();
    let server = tokio::spawn(async move { app.serve_api(listener, stop).await });
    TestApp {
        db,
        address,
        client: reqwest::Client::new(),
        service_key,
        read_key,
        metrics_key,
        admin_key,
        shutdown,
        server,
    }
}

#[allow(dead_code)] // each binary uses the requests it needs
impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub fn post(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(key)
    }

    pub fn get(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(key)
    }

    pub fn put(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.client.put(self.url(path)).bearer_auth(key)
    }

    pub fn delete(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.client.delete(self.url(path)).bearer_auth(key)
    }

    /// `GET path` with `key`, as JSON (panics on a transport error or a non-JSON body).
    pub async fn get_json(&self, path: &str, key: &str) -> serde_json::Value {
        let response = self.get(path, key).send().await.unwrap();
        response.json().await.unwrap()
    }

    /// `GET path` with `key`, as text.
    pub async fn get_text(&self, path: &str, key: &str) -> String {
        self.get(path, key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}
