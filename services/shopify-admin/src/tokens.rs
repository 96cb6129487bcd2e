//! Per-shop offline access tokens: the delivery crate's per-shop keys file
//! (`shop.myshopify.com=token` lines, read again when it changes).

pub use aftercart_delivery::shop_keys::{parse, ShopKeys as AccessTokens};
