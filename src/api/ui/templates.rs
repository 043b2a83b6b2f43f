//! Templates: the catalogue (templates, layouts, partials; latest versions), and a template's page with each
//! channel's variant rendered with the template's sample data, for the default and every locale. Through the
//! template catalogue's `list`, `latest` and `preview`, as `/v1/templates` uses them. Rendered HTML is shown as
//! its source, escaped: a template is data, and the dashboard never runs or frames it.

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;

use super::html::{encode, esc, pretty, table, time};
use super::{ApiState, PageQuery, Session, failure, page};
use crate::api::error::ApiError;
use crate::api::extract::ApiPath;
use crate::templates::document::{valid_locale, valid_name};

pub(super) async fn list(State(state): State<ApiState>, Session(caller): Session) -> Response {
    let templates = match state.engine.templates.list().await {
        Ok(templates) => templates,
        Err(error) => return failure(Some(&caller), error),
    };
    let rows: String = templates
        .iter()
        .map(|t| {
            format!(
                r#"<tr><td><a href="/ui/templates/{path}">{name}</a></td><td>{kind}</td><td class="n">{version}</td><td>{description}</td><td class="wide">{source}</td><td class="wide">{at}</td></tr>"#,
                path = encode(&t.name),
                name = esc(&t.name),
                kind = esc(&t.kind),
                version = t.latest_version,
                description = esc(t.description.as_deref().unwrap_or("")),
                source = esc(&t.source),
                at = time(t.created_at),
            )
        })
        .collect();
    let body = table(
        "templates",
        &[
            "Name",
            "Kind",
            "#Version",
            "Description",
            "~Source",
            "~Saved",
        ],
        &rows,
        "No templates: <code>herald templates sync</code> stores a folder of them.",
    );
    page("Templates", Some(&caller), &body)
}

#[derive(Deserialize, Default)]
pub(super) struct LocaleQuery {
    locale: Option<String>,
}

/// One template: its variants rendered with its sample data (a locale's with `?locale=`), or a layout's or
/// partial's source.
pub(super) async fn template_page(
    State(state): State<ApiState>,
    Session(caller): Session,
    ApiPath(name): ApiPath<String>,
    PageQuery(q): PageQuery<LocaleQuery>,
) -> Response {
    if !valid_name(&name) {
        return failure(Some(&caller), ApiError::not_found("no such template"));
    }
    let (version, document) = match state.engine.templates.latest(&name).await {
        Ok(found) => found,
        Err(error) => return failure(Some(&caller), error),
    };
    let kind = document
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("template");
    if kind != "template" {
        let body = format!(
            r#"<p>A {kind}, version {version}.</p><h2>Source</h2><pre>{source}</pre>"#,
            kind = esc(kind),
            source = pretty(&document),
        );
        return page(&format!("Template {name}"), Some(&caller), &body);
    }
    let locales: Vec<&str> = document
        .get("locales")
        .and_then(|l| l.as_object())
        .map(|l| l.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let locale = q
        .locale
        .as_deref()
        .filter(|l| valid_locale(l) && locales.contains(l));
    let path = encode(&name);
    let tabs: String = std::iter::once(None)
        .chain(locales.iter().map(|l| Some(*l)))
        .map(|l| {
            let current = if l == locale {
                r#" aria-current="page""#
            } else {
                ""
            };
            let href = l.map_or(format!("/ui/templates/{path}"), |l| {
                format!("/ui/templates/{path}?locale={}", encode(l))
            });
            format!(
                r#"<a href="{href}"{current}>{}</a>"#,
                esc(l.unwrap_or("default"))
            )
        })
        .collect();
    let rendered = match state.engine.templates.preview(&name, locale, None).await {
        Ok(preview) => preview
            .channels
            .iter()
            .map(|(channel, variant)| {
                let parts: String = variant
                    .content
                    .iter()
                    .map(|(field, text)| format!("<dt>{}</dt><dd><pre>{}</pre></dd>", esc(field), esc(text)))
                    .collect();
                format!(
                    r#"<section class="variant" data-channel="{channel}"><h3>{channel}</h3><p>Locale used: {used}</p><dl>{parts}</dl></section>"#,
                    channel = esc(channel),
                    used = esc(variant.locale.as_deref().unwrap_or("default")),
                )
            })
            .collect::<String>(),
        // A template that does not render with its own sample says why, in the catalogue's words.
        Err(error) => {
            let error = ApiError::from(error);
            format!(r#"<p class="error" role="alert">{}</p>"#, esc(error.detail()))
        }
    };
    let body = format!(
        r#"<p>Version {version}. {description}</p><p class="tabs">{tabs}</p><h2>Preview with the sample data</h2>{rendered}<h2>Sample data</h2><pre>{sample}</pre>"#,
        description = esc(document
            .get("description")
            .and_then(|d| d.as_str())
            .unwrap_or("")),
        sample = pretty(document.get("sample").unwrap_or(&serde_json::Value::Null)),
    );
    page(&format!("Template {name}"), Some(&caller), &body)
}
