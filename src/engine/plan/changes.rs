//! What a reload changed, by key path, for `report.changed` (with `changes = true`):
//! values the source changed (`"speed"`), keys it added or removed (`"-legacy"`), functions
//! whose code it changed (`"Player.draw"`, compared without line information), and locals
//! captured as upvalues whose value it changed (`"SPEED"`). Recorded by node and key while
//! planning; named once both versions' mirrors are there.

use std::collections::BTreeSet;

use super::slot::Decided;
use crate::engine::base::{Decision, KeyRef, NodeId, Prior, Snapshot, join_path, key_step};
use crate::vm::access::Val;

#[derive(Debug)]
enum Kind {
    /// in the new version: a value taken, a key added, a function whose code changed
    New,
    /// in the previous version: a key removed
    Removed,
    /// a captured local
    Local,
}

/// The changes of one reload, recorded while planning.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    raw: Vec<(Kind, Option<NodeId>, String)>,
    /// Whether the code of the function the slot being decided holds changed (set by
    /// `decide_function`; `None`: not known).
    pub(super) code_changed: Option<bool>,
}

impl Changes {
    /// A field `key` of the table at new mirror node `node`, decided as `m`.
    pub(super) fn field(&mut self, node: NodeId, key: KeyRef, m: &Decided, prior: Prior) {
        let code = self.code_changed.take();
        let changed = match m.new {
            _ if prior == Prior::Absent => true,
            Val::LuaFn(_) | Val::CFn(_) => code == Some(true),
            Val::Table(_) => false,
            _ => m.decision == Decision::TakeNew && !m.equal,
        };
        if changed {
            self.raw.push((Kind::New, Some(node), key_step(key)));
        }
    }

    /// A key of the previous version's table at `node` that the source removed.
    pub(super) fn removed(&mut self, node: Option<NodeId>, key: KeyRef) {
        self.raw.push((Kind::Removed, node, key_step(key)));
    }

    /// A captured local (upvalue `name`) decided as `m`.
    pub(super) fn local(&mut self, name: &[u8], m: &Decided) {
        self.code_changed = None;
        let data = !matches!(m.new, Val::Table(_) | Val::LuaFn(_) | Val::CFn(_));
        if data && m.decision == Decision::TakeNew && !m.equal {
            self.raw.push((Kind::Local, None, String::from_utf8_lossy(name).into_owned()));
        }
    }

    /// The changes by path, sorted, each once; removed keys with a `-` in front.
    pub(crate) fn named(self, new: &Snapshot, old: &Snapshot) -> Vec<String> {
        let (new_paths, old_paths) = (new.paths(), old.paths());
        let mut out = BTreeSet::new();
        for (kind, node, key) in self.raw {
            let path = |paths: &std::collections::HashMap<NodeId, String>| {
                node.and_then(|n| paths.get(&n)).map(|p| join_path(p, &key))
            };
            match kind {
                Kind::New => out.extend(path(&new_paths)),
                Kind::Removed => out.extend(path(&old_paths).map(|p| format!("-{p}"))),
                Kind::Local => {
                    out.insert(key);
                }
            }
        }
        out.into_iter().collect()
    }
}
