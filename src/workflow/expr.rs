//! The one language of workflow definitions: minijinja (Jinja2). Conditions, transforms, correlation keys and
//! delay timestamps are minijinja *expressions* (`trigger.amount > 100 and trigger.country == "DE"`); message
//! fields are minijinja *templates* (`Hello {{ trigger.name }}`). Both are compiled when a definition loads, so
//! a syntax error is a validation error, never a failed run.
//!
//! Expressions treat a missing field as undefined (falsy; `trigger.a.b` on a missing `a` is undefined too), so a
//! condition on an absent field takes the `else` edge. Templates are strict: rendering a missing field is an
//! error, because sending "Hello ," to a customer is worse than not sending.
//!
//! CPU: a template or expression could do unbounded work (nested loops over `range`). Every evaluation gets a
//! budget of [`FUEL`] instructions (minijinja's fuel): a template that spends it fails with a clear error, so no
//! definition can spin a worker thread past its job's timeout. A rendered template longer than
//! [`MAX_RENDERED_BYTES`] is an error too. Templates and expressions that may do more than plain lookups (a
//! statement, a call, a filter, a multiplication) are also evaluated with `tokio::task::block_in_place`, so
//! even their bounded work holds a blocking thread and not one of the few threads every other job and the
//! heartbeat run on. Plain ones (`Hello {{ trigger.name }}`) stay inline: a thread hand-off costs more than they
//! do.

use std::sync::LazyLock;

use minijinja::{Environment, Expression, UndefinedBehavior, Value};

use crate::templates::language::{describe, may_be_heavy, off_the_executor_if};

/// Instructions one evaluation may run: far above any real message (a loop over a 1,000-item list with a few
/// lookups each is about 10,000), and a few milliseconds of CPU at most.
pub const FUEL: u64 = 200_000;

/// The longest a rendered template may be (a message field: an email body is well under it).
pub const MAX_RENDERED_BYTES: usize = 1024 * 1024;

/// Compiles and evaluates expressions: undefined fields chain to undefined instead of failing.
static EXPRESSIONS: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.set_fuel(Some(FUEL));
    env
});

/// Renders templates: an undefined field is an error.
static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env
});

/// Dry runs of expressions at save time ([`Expr::check_budget`]): strict, so the run stops at the first field
/// lookup (see [`Template::check_budget`]).
static DRY_RUN_EXPRESSIONS: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env
});

/// Renders HTML templates (an email's `html` part): like [`TEMPLATES`], and every value is HTML-escaped unless
/// marked `|safe`, so trigger data cannot inject markup into mail sent from the company's domain.
static HTML_TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    env
});

/// A compiled expression and its source.
pub struct Expr {
    source: String,
    compiled: Expression<'static, 'static>,
    heavy: bool,
    /// Whether it reads `run` (the run's id, workflow, version), which a run being started has no id for yet.
    reads_run: bool,
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
            reads_run: compiled.undeclared_variables(false).contains("run"),
            compiled,
            heavy: may_be_heavy(source),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the expression reads the `run` variable.
    pub fn reads_run(&self) -> bool {
        self.reads_run
    }

    /// Save-time check: see [`Template::check_budget`] (the dry run is strict here too, though conditions
    /// evaluate missing fields as undefined at run time, so that it stops at the first field lookup).
    pub fn check_budget(&self) -> Result<(), String> {
        if !self.heavy {
            return Ok(());
        }
        let dry = DRY_RUN_EXPRESSIONS
            .compile_expression(&self.source)
            .and_then(|e| e.eval(()));
        over_budget(dry.map(|_| 0))
    }

    /// Whether [`Expr::check_budget`] has anything to run.
    pub fn is_heavy(&self) -> bool {
        self.heavy
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
    html: bool,
}

impl Template {
    /// A plain-text template (values inserted as they are).
    pub fn compile(source: &str) -> Result<Self, String> {
        Self::compile_in(source, false)
    }

    /// An HTML template: values are HTML-escaped unless marked `|safe`.
    pub fn compile_html(source: &str) -> Result<Self, String> {
        Self::compile_in(source, true)
    }

    fn compile_in(source: &str, html: bool) -> Result<Self, String> {
        let env = if html { &HTML_TEMPLATES } else { &TEMPLATES };
        env.template_from_str(source).map_err(|e| describe(&e))?;
        Ok(Self {
            source: source.to_string(),
            heavy: may_be_heavy(source),
            html,
        })
    }

    /// Save-time check: renders the template once with no data, in the environment sends use (strict, HTML
    /// escaping for HTML parts), under the same budget. With no data the first field lookup fails, so what runs
    /// is exactly the work every send does before it reads any data; if that alone spends the whole fuel or
    /// renders more than [`MAX_RENDERED_BYTES`] (a loop over a large constant `range`, say), every send would
    /// fail, and the definition is refused when saved. Any other outcome is left for run time, whose budget is
    /// the same. Plain templates (lookups only) cannot loop and are not run. Blocking: call it off the async
    /// runtime.
    pub fn check_budget(&self) -> Result<(), String> {
        if !self.heavy {
            return Ok(());
        }
        let env: &Environment<'static> = if self.html {
            &HTML_TEMPLATES
        } else {
            &TEMPLATES
        };
        over_budget(
            env.render_str(&self.source, ())
                .map(|rendered| rendered.len()),
        )
    }

    /// Whether [`Template::check_budget`] has anything to run.
    pub fn is_heavy(&self) -> bool {
        self.heavy
    }

    pub fn render(&self, context: &Value) -> Result<String, String> {
        let env: &Environment<'static> = if self.html {
            &HTML_TEMPLATES
        } else {
            &TEMPLATES
        };
        let rendered = off_the_executor_if(self.heavy, || env.render_str(&self.source, context))
            .map_err(|e| format!("template `{}`: {}", self.source, describe(&e)))?;
        if rendered.len() > MAX_RENDERED_BYTES {
            return Err(format!(
                "template `{}` rendered {} bytes, more than {MAX_RENDERED_BYTES}",
                self.source,
                rendered.len()
            ));
        }
        Ok(rendered)
    }
}

/// Whether a dry run (its output length, or its error) went over the budget, as a save-time error.
fn over_budget(dry: Result<usize, minijinja::Error>) -> Result<(), String> {
    match dry {
        Err(error) if error.kind() == minijinja::ErrorKind::OutOfFuel => Err(format!(
            "spends more than its budget of {FUEL} instructions even without data; it would fail every run"
        )),
        Ok(length) if length > MAX_RENDERED_BYTES => Err(format!(
            "renders {length} bytes even without data, more than {MAX_RENDERED_BYTES}"
        )),
        _ => Ok(()),
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

    /// Security findings 7 and 14: nested loops spun a worker thread that the job timeout could not stop. Now the
    /// evaluation runs out of fuel and fails with a clear error, in milliseconds.
    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let scope = scope(&serde_json::json!({}), &serde_json::json!({}));
        let started = std::time::Instant::now();
        let nested = Template::compile(
            "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
        )
        .unwrap();
        let error = nested.render(&scope).unwrap_err();
        assert!(error.contains("fuel"), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // An ordinary loop is well within budget.
        let fine = Template::compile("{% for i in range(1000) %}{{ i }},{% endfor %}").unwrap();
        assert!(fine.render(&scope).unwrap().ends_with("999,"));
    }

    /// Security finding 7, the save-time half: a template or expression that is over budget whatever the data is
    /// refused when its definition is saved; data-dependent work and plain lookups pass (their limit is the run's).
    #[test]
    fn templates_over_budget_without_data_are_refused_when_saved() {
        let nested = Template::compile(
            "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
        )
        .unwrap();
        let problem = nested.check_budget().unwrap_err();
        assert!(problem.contains("budget of 200000"), "{problem}");
        let huge = Template::compile("{{ 'x' * 2000000 }}").unwrap();
        assert!(huge.check_budget().unwrap_err().contains("2000000 bytes"));
        // HTML parts are checked as they are rendered: escaped (400,000 `<` become 1.6 MB of `&lt;`).
        let escaped = Template::compile_html("{{ '<' * 400000 }}").unwrap();
        assert!(escaped.check_budget().is_err());
        assert_eq!(
            Template::compile("{{ '<' * 400000 }}")
                .unwrap()
                .check_budget(),
            Ok(())
        );
        // Work that comes after a field lookup depends on data: it is left to the run-time budget.
        let after_lookup = Template::compile(
            "{{ trigger.name }}{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
        )
        .unwrap();
        assert_eq!(after_lookup.check_budget(), Ok(()));
        let heavy_expression = Expr::compile("range(100000) | map('string') | join(',')").unwrap();
        assert!(heavy_expression.check_budget().is_err());

        for fine in [
            "Hello {{ trigger.name }}",
            "{% for item in trigger.items %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
            "{% for i in range(1000) %}{{ i }},{% endfor %}",
            "{{ trigger.total * 100 }}",
        ] {
            let template = Template::compile(fine).unwrap();
            assert_eq!(template.check_budget(), Ok(()), "{fine}");
        }
        assert_eq!(
            Expr::compile("trigger.amount > 100")
                .unwrap()
                .check_budget(),
            Ok(())
        );
    }

    /// Security finding 9: trigger data was inserted into HTML parts as markup. Now HTML templates escape values
    /// (`|safe` opts out for trusted markup) and plain-text ones do not.
    #[test]
    fn html_templates_escape_values_and_text_templates_do_not() {
        let scope = scope(
            &serde_json::json!({"trigger": {"name": "<a href=\"https://evil.test\">Ada</a> & co"}}),
            &serde_json::json!({}),
        );
        let html = Template::compile_html("<p>Hello {{ trigger.name }}</p>").unwrap();
        let rendered = html.render(&scope).unwrap();
        assert!(rendered.starts_with("<p>Hello &lt;a href="), "{rendered}");
        assert_eq!(
            rendered.matches('<').count(),
            2,
            "only the template's own tags: {rendered}"
        );
        assert!(rendered.contains("&amp; co</p>"), "{rendered}");
        let trusted = Template::compile_html("{{ trigger.name | safe }}").unwrap();
        assert!(trusted.render(&scope).unwrap().starts_with("<a href"));
        let text = Template::compile("Hello {{ trigger.name }}").unwrap();
        assert!(
            text.render(&scope)
                .unwrap()
                .contains("<a href=\"https://evil.test\">")
        );
    }
}
