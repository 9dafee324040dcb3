//! Collections declared in a file, created or migrated at start.
//!
//! JSON: `{"collections": [{"name": ..., "fields": [...]}, ...]}`.
//! TOML: `[[collections]]` tables with `[[collections.fields]]` entries, same keys.
//! Collections are created in two passes (plain fields first, relations second) so they may
//! refer to each other in any order, cycles included.

use anyhow::{bail, Context};
use livebase_core::schema::{Collection, FieldType};
use livebase_store::{SchemaChange, Store};
use serde::Deserialize;
use std::path::Path;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaFile {
    #[serde(default)]
    pub collections: Vec<Collection>,
    /// Who may join which channels (broadcast and presence).
    #[serde(default)]
    pub channels: Vec<crate::access::ChannelRule>,
}

pub fn parse(text: &str, toml_syntax: bool) -> anyhow::Result<SchemaFile> {
    Ok(if toml_syntax { toml::from_str(text)? } else { serde_json::from_str(text)? })
}

/// Applies the file's collections and returns its channel rules.
pub async fn apply(store: &dyn Store, path: &Path) -> anyhow::Result<Vec<crate::access::ChannelRule>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    let file = parse(&text, is_toml).with_context(|| format!("invalid schema file {}", path.display()))?;
    ensure(store, file.collections).await?;
    Ok(file.channels)
}

/// Creates missing collections and migrates changed ones (never destructively).
pub async fn ensure(store: &dyn Store, wanted: Vec<Collection>) -> anyhow::Result<()> {
    for c in &wanted {
        if store.schema().get(&c.name).is_none() {
            let mut plain = c.clone();
            plain.fields.retain(|f| f.ty != FieldType::Relation);
            store
                .change_schema(SchemaChange::Create(plain))
                .await
                .with_context(|| format!("collection {}", c.name))?;
        }
    }
    for c in wanted {
        let current = store.schema().get(&c.name).cloned();
        if current.as_ref() != Some(&c) {
            if let Err(e) =
                store.change_schema(SchemaChange::Update { collection: c.clone(), force: false }).await
            {
                bail!("cannot migrate collection {}: {e}", c.name);
            }
        }
    }
    Ok(())
}
