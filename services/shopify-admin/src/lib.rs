//! The Shopify Admin GraphQL API as aftercart uses it: per-shop offline access tokens read from
//! a file that is reloaded when it changes ([`tokens`]), one call with Shopify's cost-based
//! throttling, retries and refusals handled ([`client`]), and the discount and store-credit
//! operations the referral programme needs ([`discounts`]).
//!
//! - `POST {admin url}` (default `https://{shop}/admin/api/{version}/graphql.json`) with
//!   `X-Shopify-Access-Token`; the token never reaches a log line or a `Debug` output.
//! - `THROTTLED` in `errors` waits `(requestedQueryCost - currentlyAvailable) / restoreRate`
//!   seconds, as `extensions.cost.throttleStatus` says, and tries again.
//! - 5xx, 408, 429, timeouts and connection errors are retried with the delivery crate's
//!   backoff ([`aftercart_delivery::RetryPolicy`]) within a budget; 401 and 403 mean the shop's
//!   token is refused (counted per shop in a gauge the alert watches).

pub mod client;
pub mod config;
pub mod discounts;
pub mod events;
pub mod metrics;
pub mod tokens;

pub use client::{AdminClient, CallError, SetupError};
pub use config::{AdminArgs, AdminConfig};
pub use discounts::{Discount, DiscountValue, Discounts, Eligibility};
pub use metrics::AdminMetrics;
pub use tokens::AccessTokens;
