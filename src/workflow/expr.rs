//! The one language of workflow definitions: minijinja (Jinja2). Conditions, transforms, correlation keys and
//! delay timestamps are minijinja *expressions* (`trigger.amount > 100 and trigger.country == "DE"`); message
//! fields are minijinja *templates* (`Hello {{ trigger.name }}`). Both are compiled when a definition loads, so
//! a syntax error is a validation error, never a failed run.
//!
//! Expressions treat a missing field as undefined (falsy; `trigger.a.b` on a missing `a` is undefined too), so a
//! condition on an absent field takes the `else` edge. Templates are strict: rendering a missing field is an
//! error, because sending "Hello ," to a customer is worse than not sending.

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
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn eval(&self, context: &Value) -> Result<Value, String> {
        self.compiled
            .eval(context)
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
}

impl Template {
    pub fn compile(source: &str) -> Result<Self, String> {
        TEMPLATES
            .template_from_str(source)
            .map_err(|e| describe(&e))?;
        Ok(Self {
            source: source.to_string(),
        })
    }

    pub fn render(&self, context: &Value) -> Result<String, String> {
        TEMPLATES
            .render_str(&self.source, context)
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
    fn syntax_errors_are_caught_at_compile_time() {
        assert!(Expr::compile("trigger.a ==").is_err());
        assert!(Template::compile("{{ trigger.a ").is_err());
    }
}
