//! The template language of the catalogue: minijinja environments for HTML and text parts (strict, fuel-bounded,
//! with the [`format`](super::format) filters), syntax checks, and running renders off the async executor.

use std::collections::HashSet;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};

use super::FUEL;

/// A strict environment with the budget and the filters; every value HTML-escaped if `html`.
pub fn environment(html: bool) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_auto_escape_callback(move |_| {
        if html {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    super::format::register(&mut env);
    env
}

/// Checks a part's syntax; answers the variables it reads.
pub fn syntax(source: &str, html: bool) -> Result<HashSet<String>, String> {
    let env = environment(html);
    let template = env.template_from_str(source).map_err(|e| describe(&e))?;
    Ok(template.undeclared_variables(false))
}

/// minijinja's error text plus its detail (which names the missing variable or offending token) when there is
/// one.
pub fn describe(error: &minijinja::Error) -> String {
    match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.to_string(),
    }
}

/// Runs `work` where it cannot hold one of the async runtime's worker threads when `heavy`: on a blocking thread
/// (`block_in_place`), which needs the multi-threaded runtime; elsewhere (a single-threaded test runtime) inline.
pub fn off_the_executor_if<T>(heavy: bool, work: impl FnOnce() -> T) -> T {
    let multi_threaded = tokio::runtime::Handle::try_current()
        .is_ok_and(|rt| rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if heavy && multi_threaded {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// Whether evaluating `source` can take more than a moment: true for any statement (`{% for %}`), call
/// (`range(…)`), filter (`|`) or multiplication (`"x" * n`), the constructs through which Jinja does unbounded
/// work. Deliberately coarse: a false "heavy" costs a thread hand-off, a false "light" could stall a thread.
pub fn may_be_heavy(source: &str) -> bool {
    source.contains("{%") || source.contains(['(', '|', '*'])
}
