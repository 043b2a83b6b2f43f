//! The one language of workflow definitions: minijinja (Jinja2). Conditions, transforms, correlation keys and
//! delay timestamps are minijinja *expressions* (`trigger.amount > 100 and trigger.country == "DE"`); message
//! fields are minijinja *templates* (`Hello {{ trigger.name }}`). Both are compiled when a definition loads, so
//! a syntax error is a validation error, never a failed run.
//!
//! Expressions treat a missing field as undefined (falsy; `trigger.a.b` on a missing `a` is undefined too), so a
//! condition on an absent field takes the `else` edge. Templates are strict: rendering a missing field is an
//! error, because sending "Hello ," to a customer is worse than not sending.
//!
//! CPU: a template or expression can do unbounded work (nested loops over `range`, string repetition). Those that
//! can (anything beyond plain variable lookups, comparisons and boolean logic: a statement, a call, a filter, a
//! multiplication) are evaluated with `tokio::task::block_in_place`, so a runaway one holds a blocking thread and
//! not one of the few threads every other job and the heartbeat run on. Plain ones, the common case
//! (`Hello {{ trigger.name }}`), stay inline: moving off the executor costs a thread hand-off per call. Bounding
//! the work itself (template fuel) belongs to the edge-safety work.

use std::sync::LazyLock;

use minijinja::{Environment, Expression, UndefinedBehavior, Value};

/// Compiles and evaluates expressions: undefined fields chain to undefined instead of failing.
static EXPRESSIONS: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env
});

/// Renders templates: an undefined field is an error.
static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
});

/// A compiled expression and its source.
pub struct Expr {
    source: String,
    compiled: Expression<'static, 'static>,
    heavy: bool,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl Expr {
    pub fn compile(source: &str) -> Result<Self, String> {
        let compiled = EXPRESSIONS
            .compile_expression_owned(source.to_string())
            .map_err(|e| describe(&e))?;
        Ok(Self {
            source: source.to_string(),
            compiled,
            heavy: may_be_heavy(source),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn eval(&self, context: &Value) -> Result<Value, String> {
        off_the_executor_if(self.heavy, || self.compiled.eval(context))
            .map_err(|e| format!("expression `{}`: {}", self.source, describe(&e)))
    }

    /// Evaluates to a truth value, Jinja's way: undefined, none, false, 0, "" and empty collections are false.
    pub fn test(&self, context: &Value) -> Result<bool, String> {
        Ok(self.eval(context)?.is_true())
    }

    /// Evaluates to JSON (for transforms and outputs). Undefined becomes `null`.
    pub fn eval_json(&self, context: &Value) -> Result<serde_json::Value, String> {
        let value = self.eval(context)?;
        if value.is_undefined() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::to_value(&value).map_err(|e| {
            format!(
                "expression `{}` gave a value that is not JSON: {e}",
                self.source
            )
        })
    }
}

/// A template checked at load time; rendered from its source.
#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    heavy: bool,
}

impl Template {
    pub fn compile(source: &str) -> Result<Self, String> {
        TEMPLATES
            .template_from_str(source)
            .map_err(|e| describe(&e))?;
        Ok(Self {
            source: source.to_string(),
            heavy: may_be_heavy(source),
        })
    }

    pub fn render(&self, context: &Value) -> Result<String, String> {
        off_the_executor_if(self.heavy, || TEMPLATES.render_str(&self.source, context))
            .map_err(|e| format!("template `{}`: {}", self.source, describe(&e)))
    }
}

/// The variables expressions and templates see: the run's context plus `run` (id, workflow, version).
pub fn scope(context: &serde_json::Value, run: &serde_json::Value) -> Value {
    let mut scope = match context {
        serde_json::Value::Object(map) => map.clone(),
        _ => serde_json::Map::new(),
    };
    scope.insert("run".into(), run.clone());
    Value::from(minijinja::value::Serde(&scope))
}

/// Whether evaluating `source` can take more than a moment: true for any statement (`{% for %}`), call
/// (`range(…)`), filter (`|`) or multiplication (`"x" * n`), the constructs through which Jinja does unbounded
/// work. Deliberately coarse: a false "heavy" costs a thread hand-off, a false "light" could stall a thread.
fn may_be_heavy(source: &str) -> bool {
    source.contains("{%") || source.contains(['(', '|', '*'])
}

/// Runs `work` where it cannot hold one of the async runtime's threads when `heavy` (see the module docs).
/// `block_in_place` needs the multi-threaded runtime; elsewhere (a single-threaded test runtime) it runs inline.
fn off_the_executor_if<T>(heavy: bool, work: impl FnOnce() -> T) -> T {
    let multi_threaded = tokio::runtime::Handle::try_current()
        .is_ok_and(|rt| rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if heavy && multi_threaded {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// minijinja's error text plus its detail (which names the offending token) when there is one.
fn describe(error: &minijinja::Error) -> String {
    match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_are_falsy_in_expressions() {
        let scope = scope(
            &serde_json::json!({"trigger": {"a": 1}}),
            &serde_json::json!({}),
        );
        assert!(
            Expr::compile("trigger.a == 1")
                .unwrap()
                .test(&scope)
                .unwrap()
        );
        assert!(!Expr::compile("trigger.b").unwrap().test(&scope).unwrap());
        assert!(!Expr::compile("trigger.b.c").unwrap().test(&scope).unwrap());
    }

    #[test]
    fn templates_refuse_missing_fields() {
        let scope = scope(
            &serde_json::json!({"trigger": {"a": 1}}),
            &serde_json::json!({}),
        );
        let template = Template::compile("x={{ trigger.a }}").unwrap();
        assert_eq!(template.render(&scope).unwrap(), "x=1");
        let missing = Template::compile("{{ trigger.b }}").unwrap();
        assert!(missing.render(&scope).is_err());
    }

    #[test]
    fn only_plain_lookups_and_comparisons_count_as_light() {
        for light in [
            "Hello {{ trigger.name }}",
            "trigger.amount > 100 and trigger.country == \"DE\"",
        ] {
            assert!(!may_be_heavy(light), "{light}");
        }
        for heavy in [
            "{% for i in range(10) %}x{% endfor %}",
            "{{ range(10) | list }}",
            "{{ 'x' * 1000 }}",
            "trigger.items | length > 2",
        ] {
            assert!(may_be_heavy(heavy), "{heavy}");
        }
    }

    #[test]
    fn syntax_errors_are_caught_at_compile_time() {
        assert!(Expr::compile("trigger.a ==").is_err());
        assert!(Template::compile("{{ trigger.a ").is_err());
    }
}
