//! A small client of the ingress's IronWorker v2 API, scoped to one project.

use anyhow::{bail, Context};
use serde_json::{json, Value};
use workhook_cli::Settings;

pub struct Api {
    client: reqwest::Client,
    base: String,
    project: String,
    token: String,
}

/// A downloaded file and the name the server suggests for it.
pub struct Download {
    pub bytes: Vec<u8>,
    pub file_name: Option<String>,
}

impl Api {
    pub fn new(s: &Settings) -> anyhow::Result<Self> {
        let (project, token) = s.credentials()?;
        Ok(Api {
            client: reqwest::Client::new(),
            base: s.url.trim_end_matches('/').to_string(),
            project: project.to_string(),
            token: token.to_string(),
        })
    }

    /// `path` under the project, e.g. `/codes`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/2/projects/{}{path}", self.base, self.project)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let answer = request
            .header("Authorization", format!("OAuth {}", self.token))
            .send()
            .await
            .with_context(|| {
                format!(
                    "cannot reach workhook at {} (set WORKHOOK_URL or pass --url)",
                    self.base
                )
            })?;
        let status = answer.status();
        if status.is_success() {
            return Ok(answer);
        }
        let text = answer.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["msg"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.trim().chars().take(200).collect());
        let hint = match status.as_u16() {
            401 => " (check WORKHOOK_PROJECT_ID and WORKHOOK_TOKEN)",
            _ => "",
        };
        bail!("workhook answered {status}: {msg}{hint}")
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let answer = self.send(request).await?;
        answer
            .json()
            .await
            .context("workhook answered with something that is not JSON")
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.json(self.client.get(self.url(path))).await
    }

    /// POSTs `body` as JSON (`{}` when there is none).
    pub async fn post(&self, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        self.json(
            self.client
                .post(self.url(path))
                .json(&body.unwrap_or_else(|| json!({}))),
        )
        .await
    }

    pub async fn post_form(
        &self,
        path: &str,
        form: reqwest::multipart::Form,
    ) -> anyhow::Result<Value> {
        self.json(self.client.post(self.url(path)).multipart(form))
            .await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.json(self.client.delete(self.url(path))).await
    }

    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Download> {
        let answer = self.send(self.client.get(self.url(path))).await?;
        let file_name = answer
            .headers()
            .get("content-disposition")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split("filename=").nth(1))
            .map(|n| n.trim_matches(|c| c == '"' || c == ' ').to_string())
            .filter(|n| !n.is_empty() && !n.contains('/') && !n.contains(".."));
        let bytes = answer.bytes().await?.to_vec();
        Ok(Download { bytes, file_name })
    }

    /// The id of the code named `name` (the API addresses codes by id).
    pub async fn code_id(&self, name: &str) -> anyhow::Result<String> {
        for page in 0..=100 {
            let body = self
                .get(&format!("/codes?per_page=100&page={page}"))
                .await?;
            let codes = body["codes"].as_array().cloned().unwrap_or_default();
            if let Some(code) = codes.iter().find(|c| c["name"] == name) {
                return code["id"]
                    .as_str()
                    .map(str::to_string)
                    .context("workhook answered a code without an id");
            }
            if codes.len() < 100 {
                break;
            }
        }
        bail!("no code named {name:?}: upload it first (workhook code upload), or see `workhook code list`")
    }
}
