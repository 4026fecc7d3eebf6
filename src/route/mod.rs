//! The compiled route table: globs over event types, destination templates, fan-out targets.
//! Built once from validated config; routing is a pure lookup.

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

/// A route: globs and targets.
#[derive(Debug, Clone)]
pub struct Route {
    pub patterns: Vec<Glob>,
    pub targets: Vec<Target>,
}

impl Route {
    pub fn matches(&self, event_type: &str) -> bool {
        self.patterns.iter().any(|g| g.matches(event_type))
    }
}

/// Ordered routes; the first that matches wins.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    pub fn new(routes: Vec<Route>) -> Self {
        Router { routes }
    }

    /// The targets for an event type, or `None` when no route matches (the event is dropped).
    pub fn route(&self, event_type: &str) -> Option<(usize, &Route)> {
        self.routes.iter().enumerate().find(|(_, r)| r.matches(event_type))
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// Renders every target of a route for one event: `(target, destination)`.
pub fn destinations<'r>(route: &'r Route, meta: &EventMeta) -> Vec<(&'r Target, String)> {
    route.targets.iter().map(|t| (t, t.destination.render(meta))).collect()
}
