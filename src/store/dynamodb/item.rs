//! Reading and writing item attributes.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::malformed;
use crate::store::StoreError;

pub type Item = HashMap<String, AttributeValue>;

pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// An id or a time as a sort key: fixed width, so text order is number order.
pub fn pad(v: i64) -> String {
    format!("{v:020}")
}

/// `v` as a string attribute, or NULL.
pub fn opt_s(v: Option<impl Into<String>>) -> AttributeValue {
    v.map(s).unwrap_or(AttributeValue::Null(true))
}

pub fn opt_n(v: Option<i64>) -> AttributeValue {
    v.map(n).unwrap_or(AttributeValue::Null(true))
}

pub fn get_s(item: &Item, key: &str) -> Result<String, StoreError> {
    get_opt_s(item, key)?.ok_or_else(|| malformed(format!("no {key}")))
}

pub fn get_opt_s(item: &Item, key: &str) -> Result<Option<String>, StoreError> {
    match item.get(key) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
        Some(_) => Err(malformed(format!("{key} is not a string"))),
    }
}

pub fn get_n(item: &Item, key: &str) -> Result<i64, StoreError> {
    get_opt_n(item, key)?.ok_or_else(|| malformed(format!("no {key}")))
}

pub fn get_opt_n(item: &Item, key: &str) -> Result<Option<i64>, StoreError> {
    match item.get(key) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::N(v)) => v
            .parse()
            .map(Some)
            .map_err(|_| malformed(format!("{key} is not an integer"))),
        Some(_) => Err(malformed(format!("{key} is not a number"))),
    }
}

pub fn get_b(item: &Item, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    match item.get(key) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::B(v)) => Ok(Some(v.clone().into_inner())),
        Some(_) => Err(malformed(format!("{key} is not binary"))),
    }
}

/// The key of an item: `pk`, `sk`.
pub fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}
