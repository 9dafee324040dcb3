//! Permissions: collection rules compiled once per schema version and checked on every path
//! (REST reads and writes, subscriptions, snapshots, resume history, the change log,
//! channels).
//!
//! A row is *visible* to a caller when both the collection's `list` and `view` rules allow
//! it; `get` needs `view`. Writes are checked inside the store's transaction through
//! [`Access::authorize`], so update and delete rules see the stored row. A caller that cannot
//! see a row gets 404 for it, never 403: existence is not leaked. A missing rule means admin
//! only. The admin key bypasses every rule.

use crate::auth::Principal;
use livebase_core::filter::like_match;
use livebase_core::rules::{CollectionRules, Rule, RuleContext};
use livebase_core::{Record, Schema};
use livebase_store::{AccessCheck, Action, StoreError};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Who may use channels whose name matches `pattern` (`*` matches any run of characters).
/// Evaluated with `auth.*` and `data.channel`; the first matching rule decides. Channels
/// matching no pattern admit authenticated callers (a user token or the admin key) only; a
/// rule opens a channel to anonymous callers explicitly (e.g. `"rule": "true"`). Channels
/// named `public:…` (a Supabase client's channels with `private: false`) are open to every
/// caller unless a configured rule matches them: see [`PUBLIC_CHANNELS`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRule {
    pub pattern: String,
    pub rule: String,
}

/// Rules of one schema version.
pub struct Access {
    schema: Arc<Schema>,
    rules: HashMap<String, CollectionRules>,
    channels: Arc<Vec<(String, Rule)>>,
}

pub struct AccessCache {
    current: RwLock<Arc<Access>>,
    channels: Arc<Vec<(String, Rule)>>,
}

/// The rule every server ends its channel rules with: channels named `public:*` admit every
/// caller (configured rules come first, so one can still close them).
pub const PUBLIC_CHANNELS: (&str, &str) = ("public:*", "true");

impl AccessCache {
    pub fn new(schema: Arc<Schema>, channels: &[ChannelRule]) -> anyhow::Result<AccessCache> {
        let mut compiled = Vec::new();
        let (public, open) = PUBLIC_CHANNELS;
        let builtin = ChannelRule { pattern: public.into(), rule: open.into() };
        for c in channels.iter().chain([&builtin]) {
            let rule =
                Rule::parse(&c.rule).map_err(|e| anyhow::anyhow!("channel rule for '{}': {e}", c.pattern))?;
            compiled.push((c.pattern.clone(), rule));
        }
        let channels = Arc::new(compiled);
        let current = RwLock::new(Arc::new(Access::compile(schema, channels.clone())));
        Ok(AccessCache { current, channels })
    }

    /// The rules for this schema version (recompiled when the schema changed).
    pub fn get(&self, schema: &Arc<Schema>) -> Arc<Access> {
        let cur = self.current.read().clone();
        if Arc::ptr_eq(&cur.schema, schema) {
            return cur;
        }
        let next = Arc::new(Access::compile(schema.clone(), self.channels.clone()));
        *self.current.write() = next.clone();
        next
    }
}

impl Access {
    fn compile(schema: Arc<Schema>, channels: Arc<Vec<(String, Rule)>>) -> Access {
        let mut rules = HashMap::new();
        for (name, c) in &schema.collections {
            // Definitions are checked before they are stored, so this only fails on a
            // definition stored by an older version; such a collection stays admin-only.
            match CollectionRules::parse(&c.rules) {
                Ok(r) => {
                    rules.insert(name.clone(), r);
                }
                Err((action, e)) => tracing::error!(collection = %name, action, error = %e, "unusable rule"),
            }
        }
        Access { schema, rules, channels }
    }

    fn rules(&self, collection: &str) -> Option<&CollectionRules> {
        self.rules.get(collection)
    }

    fn eval(
        rule: Option<&Rule>,
        who: &Principal,
        record: Option<&Record>,
        data: Option<&Map<String, Value>>,
    ) -> bool {
        match rule {
            None => false,
            Some(r) if r.always() => true,
            Some(r) => r.eval(&RuleContext { auth: who.claims(), record, data }),
        }
    }

    /// May the caller list (or subscribe to) this collection at all? A list rule that reads
    /// only `auth` decides here (403 when false); one that reads `record` filters rows.
    pub fn can_list(&self, who: &Principal, collection: &str) -> bool {
        if who.is_admin() {
            return true;
        }
        match self.rules(collection).and_then(|r| r.list.as_ref()) {
            None => false,
            Some(r) if r.uses_record() => true,
            Some(r) => Self::eval(Some(r), who, None, None),
        }
    }

    /// True when every row passes list and view for this caller without evaluating anything.
    pub fn open_rows(&self, who: &Principal, collection: &str) -> bool {
        who.is_admin() || self.open_to_all(collection)
    }

    /// True when the list and view rules are both `true`: everyone sees every row.
    pub fn open_to_all(&self, collection: &str) -> bool {
        self.rules(collection).is_some_and(|r| {
            r.list.as_ref().is_some_and(Rule::always) && r.view.as_ref().is_some_and(Rule::always)
        })
    }

    /// Whether a row may appear in the caller's lists, snapshots and change feeds.
    pub fn row_visible(&self, who: &Principal, collection: &str, r: &Record) -> bool {
        if who.is_admin() {
            return true;
        }
        let Some(rules) = self.rules(collection) else { return false };
        Self::eval(rules.list.as_ref(), who, Some(r), None)
            && Self::eval(rules.view.as_ref(), who, Some(r), None)
    }

    pub fn can_view(&self, who: &Principal, collection: &str, r: &Record) -> bool {
        who.is_admin()
            || self.rules(collection).is_some_and(|rules| Self::eval(rules.view.as_ref(), who, Some(r), None))
    }

    /// The store's write hook for this caller.
    pub fn authorize(&self, who: &Principal, check: &AccessCheck<'_>) -> Result<(), StoreError> {
        if who.is_admin() {
            return Ok(());
        }
        let rules = self.rules(check.collection);
        let rule = |a: Action| match a {
            Action::Create => rules.and_then(|r| r.create.as_ref()),
            Action::Update => rules.and_then(|r| r.update.as_ref()),
            Action::Delete => rules.and_then(|r| r.delete.as_ref()),
        };
        if let Some(r) = check.record {
            if !self.can_view(who, check.collection, r) {
                return Err(StoreError::NotFound {
                    collection: check.collection.to_string(),
                    id: r.id().to_string(),
                });
            }
        }
        if Self::eval(rule(check.action), who, check.record, check.data) {
            Ok(())
        } else {
            let verb = match check.action {
                Action::Create => "create records in",
                Action::Update => "update this record in",
                Action::Delete => "delete this record from",
            };
            Err(StoreError::Forbidden(format!("not allowed to {verb} '{}'", check.collection)))
        }
    }

    /// May the caller join, broadcast on and track presence in this channel?
    pub fn channel_allowed(&self, who: &Principal, channel: &str) -> bool {
        if who.is_admin() {
            return true;
        }
        let Some((_, rule)) = self.channels.iter().find(|(p, _)| like_match(p, channel)) else {
            // Closed by default: no rule covers it, so only callers with a token get in.
            return !matches!(who, Principal::Anonymous(_));
        };
        let mut data = Map::new();
        data.insert("channel".into(), Value::String(channel.to_string()));
        rule.always() || rule.eval(&RuleContext { auth: who.claims(), record: None, data: Some(&data) })
    }

    /// A change event as the caller may see it: the sides it cannot view are blanked; None
    /// when it can see neither.
    pub fn redact_event(
        &self,
        who: &Principal,
        mut e: livebase_core::ChangeEvent,
    ) -> Option<livebase_core::ChangeEvent> {
        if who.is_admin() {
            return Some(e);
        }
        let vis = |r: &Option<Record>| r.as_ref().is_some_and(|r| self.row_visible(who, &e.collection, r));
        let (new_ok, old_ok) = (vis(&e.new), vis(&e.old));
        if !new_ok && !old_ok {
            return None;
        }
        if !new_ok {
            e.new = None;
        }
        if !old_ok {
            e.old = None;
        }
        Some(e)
    }
}
