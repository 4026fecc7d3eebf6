//! The compiled route table: globs over event types, filters on mode, account and endpoint,
//! destination templates, fan-out targets, and the dead-letter target. Built once from validated
//! config; routing is a pure lookup.

mod glob;
mod template;

pub use glob::Glob;
pub use template::{Template, TemplateError};

use crate::event::EventMeta;

/// One destination of a route, with its sink resolved to an index into the sink list.
#[derive(Debug, Clone)]
pub struct Target {
    /// Index of the sink in [`crate::config::Settings::sinks`].
    pub sink: usize,
    /// The sink's name, for logs and metrics.
    pub sink_name: String,
    /// Topic or routing-key template.
    pub destination: Template,
}

/// Conditions on an event besides its type. Each one given must hold; none given matches all.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// Only live-mode (`true`) or test-mode (`false`) events.
    pub livemode: Option<bool>,
    /// Globs over the Connect account id, `platform` for events without one; empty: any.
    pub accounts: Vec<Glob>,
    /// Endpoint paths the event must have arrived on; empty: any.
    pub endpoints: Vec<String>,
}

/// What a route is matched against: the event and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub event_type: &'a str,
    pub livemode: bool,
    /// The Connect account, `None` for the platform's own events.
    pub account: Option<&'a str>,
    /// The endpoint path the event arrived on; `None` when it did not come through an endpoint
    /// (a route with an `endpoint` condition never matches such an event).
    pub endpoint: Option<&'a str>,
}

impl<'a> Incoming<'a> {
    pub fn new(meta: &'a EventMeta, endpoint: Option<&'a str>) -> Self {
        Incoming {
            event_type: &meta.event_type,
            livemode: meta.livemode,
            account: meta.account.as_deref(),
            endpoint,
        }
    }

    /// The account as routes see it: the id, or `platform`.
    pub fn account_label(&self) -> &'a str {
        self.account.unwrap_or("platform")
    }

    /// `live` or `test`.
    pub fn mode_label(&self) -> &'static str {
        if self.livemode {
            "live"
        } else {
            "test"
        }
    }
}

/// Why a route does not take an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// No `match` glob fits the event type.
    Type,
    /// The route takes only events of the other mode.
    Livemode { wanted: bool },
    /// No `account` glob fits the event's account.
    Account,
    /// The event arrived on another endpoint (or on none).
    Endpoint,
}

impl Mismatch {
    /// One line for `hookbridge route`.
    pub fn describe(&self, event: &Incoming) -> String {
        match self {
            Mismatch::Type => format!("type `{}` fits no `match` glob", event.event_type),
            Mismatch::Livemode { wanted } => format!(
                "livemode: the route takes {} events only; this one is {} mode",
                if *wanted { "live" } else { "test" },
                event.mode_label()
            ),
            Mismatch::Account => format!("account `{}` fits no `account` glob", event.account_label()),
            Mismatch::Endpoint => match event.endpoint {
                Some(e) => format!("endpoint `{e}` is not one of the route's `endpoint` paths"),
                None => "the route takes events of given endpoints only, and no endpoint was given".into(),
            },
        }
    }
}

/// A route: globs, filters, targets and an optional dead-letter target of its own.
#[derive(Debug, Clone)]
pub struct Route {
    pub patterns: Vec<Glob>,
    pub filters: Filters,
    pub targets: Vec<Target>,
    /// Where a message that a target refused for good goes instead (overrides the global one).
    pub dead_letter: Option<Target>,
}

impl Route {
    /// Whether the route takes the event: the type fits a glob and every filter holds.
    pub fn matches(&self, event: &Incoming) -> bool {
        self.mismatches(event).is_empty()
    }

    /// Every reason the route does not take the event; empty when it does.
    pub fn mismatches(&self, event: &Incoming) -> Vec<Mismatch> {
        let mut out = Vec::new();
        if !self.patterns.iter().any(|g| g.matches(event.event_type)) {
            out.push(Mismatch::Type);
        }
        if let Some(wanted) = self.filters.livemode {
            if wanted != event.livemode {
                out.push(Mismatch::Livemode { wanted });
            }
        }
        if !self.filters.accounts.is_empty() && !self.filters.accounts.iter().any(|g| g.matches(event.account_label()))
        {
            out.push(Mismatch::Account);
        }
        if !self.filters.endpoints.is_empty()
            && !event
                .endpoint
                .is_some_and(|e| self.filters.endpoints.iter().any(|p| p == e))
        {
            out.push(Mismatch::Endpoint);
        }
        out
    }

    /// The route's conditions besides `match`, as `livemode true, account acct_*`; empty if none.
    pub fn describe_filters(&self) -> String {
        let mut parts = Vec::new();
        if let Some(l) = self.filters.livemode {
            parts.push(format!("livemode {l}"));
        }
        if !self.filters.accounts.is_empty() {
            let globs: Vec<_> = self.filters.accounts.iter().map(Glob::as_str).collect();
            parts.push(format!("account {}", globs.join(", ")));
        }
        if !self.filters.endpoints.is_empty() {
            parts.push(format!("endpoint {}", self.filters.endpoints.join(", ")));
        }
        parts.join("; ")
    }
}

/// Ordered routes; the first that matches wins.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
    /// The global dead-letter target, for routes without their own.
    dead_letter: Option<Target>,
}

impl Router {
    pub fn new(routes: Vec<Route>) -> Self {
        Router {
            routes,
            dead_letter: None,
        }
    }

    /// Sets the global dead-letter target.
    pub fn with_dead_letter(mut self, dead_letter: Option<Target>) -> Self {
        self.dead_letter = dead_letter;
        self
    }

    /// The first route that takes the event, or `None` (the event is dropped).
    pub fn route(&self, event: &Incoming) -> Option<(usize, &Route)> {
        self.routes.iter().enumerate().find(|(_, r)| r.matches(event))
    }

    /// Each route in order up to and including the first that takes the event, with the reasons
    /// it does not (empty for the one that does): what `hookbridge route` prints.
    pub fn explain(&self, event: &Incoming) -> Vec<(usize, &Route, Vec<Mismatch>)> {
        let mut out = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            let why = r.mismatches(event);
            let matched = why.is_empty();
            out.push((i, r, why));
            if matched {
                break;
            }
        }
        out
    }

    /// Where a message of `route` that a target refused for good goes: the route's own
    /// dead-letter target, else the global one, else nowhere (the failure is answered).
    pub fn dead_letter_for<'r>(&'r self, route: &'r Route) -> Option<&'r Target> {
        route.dead_letter.as_ref().or(self.dead_letter.as_ref())
    }

    /// The global dead-letter target.
    pub fn dead_letter(&self) -> Option<&Target> {
        self.dead_letter.as_ref()
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// Renders every target of a route for one event: `(target, destination)`.
pub fn destinations<'r>(route: &'r Route, meta: &EventMeta) -> Vec<(&'r Target, String)> {
    route.targets.iter().map(|t| (t, t.destination.render(meta))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(globs: &[&str], filters: Filters) -> Route {
        Route {
            patterns: globs.iter().map(|g| Glob::new(g)).collect(),
            filters,
            targets: Vec::new(),
            dead_letter: None,
        }
    }

    fn event<'a>(t: &'a str, live: bool, account: Option<&'a str>, endpoint: Option<&'a str>) -> Incoming<'a> {
        Incoming {
            event_type: t,
            livemode: live,
            account,
            endpoint,
        }
    }

    #[test]
    fn no_filters_match_on_type_alone() {
        let r = route(&["invoice.*"], Filters::default());
        assert!(r.matches(&event("invoice.paid", true, Some("acct_1"), None)));
        assert!(r.matches(&event("invoice.paid", false, None, Some("/x"))));
        assert_eq!(
            r.mismatches(&event("charge.failed", false, None, None)),
            vec![Mismatch::Type]
        );
    }

    #[test]
    fn livemode_filter() {
        let live = route(
            &["*"],
            Filters {
                livemode: Some(true),
                ..Filters::default()
            },
        );
        assert!(live.matches(&event("invoice.paid", true, None, None)));
        assert_eq!(
            live.mismatches(&event("invoice.paid", false, None, None)),
            vec![Mismatch::Livemode { wanted: true }]
        );
        let test = route(
            &["*"],
            Filters {
                livemode: Some(false),
                ..Filters::default()
            },
        );
        assert!(test.matches(&event("invoice.paid", false, None, None)));
        assert!(!test.matches(&event("invoice.paid", true, None, None)));
    }

    #[test]
    fn account_globs_and_platform() {
        let connect = route(
            &["*"],
            Filters {
                accounts: vec![Glob::new("acct_1*"), Glob::new("acct_9")],
                ..Filters::default()
            },
        );
        assert!(connect.matches(&event("x.y", true, Some("acct_123"), None)));
        assert!(connect.matches(&event("x.y", true, Some("acct_9"), None)));
        assert!(!connect.matches(&event("x.y", true, Some("acct_2"), None)));
        assert_eq!(
            connect.mismatches(&event("x.y", true, None, None)),
            vec![Mismatch::Account]
        );
        let platform = route(
            &["*"],
            Filters {
                accounts: vec![Glob::new("platform")],
                ..Filters::default()
            },
        );
        assert!(platform.matches(&event("x.y", true, None, None)));
        assert!(!platform.matches(&event("x.y", true, Some("acct_1"), None)));
        // `*` takes every account, the platform's own events included.
        let any = route(
            &["*"],
            Filters {
                accounts: vec![Glob::new("*")],
                ..Filters::default()
            },
        );
        assert!(any.matches(&event("x.y", true, None, None)));
    }

    #[test]
    fn endpoint_filter_needs_a_known_endpoint() {
        let r = route(
            &["*"],
            Filters {
                endpoints: vec!["/live".into(), "/live2".into()],
                ..Filters::default()
            },
        );
        assert!(r.matches(&event("x.y", true, None, Some("/live2"))));
        assert!(!r.matches(&event("x.y", true, None, Some("/test"))));
        // An event that came through no endpoint (a replay) never matches an endpoint condition.
        assert_eq!(r.mismatches(&event("x.y", true, None, None)), vec![Mismatch::Endpoint]);
    }

    #[test]
    fn every_failing_condition_is_reported_and_first_match_wins() {
        let strict = route(
            &["invoice.*"],
            Filters {
                livemode: Some(true),
                accounts: vec![Glob::new("platform")],
                endpoints: vec!["/live".into()],
            },
        );
        let e = event("charge.failed", false, Some("acct_1"), Some("/test"));
        assert_eq!(
            strict.mismatches(&e),
            vec![
                Mismatch::Type,
                Mismatch::Livemode { wanted: true },
                Mismatch::Account,
                Mismatch::Endpoint
            ]
        );
        let router = Router::new(vec![
            strict,
            route(&["charge.*"], Filters::default()),
            route(&["*"], Filters::default()),
        ]);
        assert_eq!(router.route(&e).map(|(i, _)| i), Some(1));
        let explained = router.explain(&e);
        assert_eq!(explained.len(), 2, "stops at the first match");
        assert_eq!(explained[0].2.len(), 4);
        assert!(explained[1].2.is_empty());
        assert!(Mismatch::Livemode { wanted: true }
            .describe(&e)
            .contains("live events only; this one is test mode"));
        assert!(Mismatch::Account.describe(&e).contains("acct_1"));
    }

    #[test]
    fn dead_letter_of_the_route_wins_over_the_global_one() {
        let target = |name: &str| Target {
            sink: 0,
            sink_name: name.into(),
            destination: Template::parse("dlq").unwrap(),
        };
        let mut own = route(&["a"], Filters::default());
        own.dead_letter = Some(target("own"));
        let plain = route(&["b"], Filters::default());
        let router = Router::new(vec![own.clone(), plain.clone()]);
        assert_eq!(router.dead_letter_for(&own).map(|t| t.sink_name.as_str()), Some("own"));
        assert!(router.dead_letter_for(&plain).is_none(), "off by default");
        let router = router.with_dead_letter(Some(target("global")));
        assert_eq!(router.dead_letter_for(&own).map(|t| t.sink_name.as_str()), Some("own"));
        assert_eq!(
            router.dead_letter_for(&plain).map(|t| t.sink_name.as_str()),
            Some("global")
        );
    }
}
