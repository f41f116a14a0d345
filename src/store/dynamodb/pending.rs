//! The methods the DynamoDB engine does not have yet: each answers
//! [`StoreError::Unavailable`] naming itself. A method leaves this list when it is written.

use super::{not_complete, DynamoStore};
use crate::config::JournalConfig;
use crate::store::*;

/// Declares methods that are not written yet.
macro_rules! pending {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;)*) => {
        impl DynamoStore {
            $(
                pub async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StoreError> {
                    $(let _ = $arg;)*
                    Err(not_complete(stringify!($name)))
                }
            )*
        }
    };
}

pending! {
    fn prune(&self, now_ms: i64, settings: &JournalConfig) -> Pruned;
}
