//! forja-render: what forja draws for its reports, without dependencies.
//!
//! - SVG charts ([`line_chart`] for loss and metric curves, [`scatter_chart`]
//!   for a sweep's values against a parameter, [`confusion_heatmap`] for
//!   confusion matrices);
//! - [`html_escape`] for text in HTML pages (the report card, attribution
//!   highlights).
//!
//! This crate never depends on libtorch.

mod html;
mod svg;

pub use html::html_escape;
pub use svg::{confusion_heatmap, line_chart, scatter_chart, Series};
