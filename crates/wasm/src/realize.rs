//! Streaming into a JS identity: the same planning as the Rust `stream_into_identity`
//! (`replikativ_peer::realize::plan`), with the applied-log in memory. [`Stream::take_next`] (`next` in JS) returns
//! what was not applied yet, in the datatype's deterministic order, and records it applied; the
//! npm package's `streamIntoIdentity` runs the JS reducers over it on every change. So each commit
//! reaches the reducers once per stream (a page reload starts a new stream from the initial state).

use std::collections::BTreeMap;

use js_sys::{Array, Object, Reflect};
use replikativ_crdt::{Address, ContentId};
use replikativ_peer::proto::{Command, CrdtState, Reply};
use replikativ_peer::realize::plan::{self, AppliedLog, CdvcsLog, CdvcsPlan};
use wasm_bindgen::prelude::*;

use crate::driver::{self, Shared};
use crate::value::{to_js, transactions_to_js};

/// Commit records read per command.
const READ_CHUNK: usize = 512;

/// A realization stream over one address (see the module docs).
#[wasm_bindgen]
pub struct Stream {
    shared: Shared,
    address: Address,
    log: AppliedLog,
    reported_heads: Option<Vec<ContentId>>,
}

fn set(o: &Object, k: &str, v: JsValue) {
    let _ = Reflect::set(o, &k.into(), &v);
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("address", &self.address).finish()
    }
}

impl Stream {
    pub(crate) fn new(shared: Shared, address: Address) -> Stream {
        Stream { shared, address, log: AppliedLog::default(), reported_heads: None }
    }
}

#[wasm_bindgen]
impl Stream {
    /// What to apply next: `{reset, units: [{id, commits: [{id, author, ts, transactions}]}],
    /// cdvcsConflict: null | {heads, mergeBases}, ormapConflicts: [{key, commits}]}`. With
    /// `reset` the identity starts over from its initial state (a CDVCS whose history changed
    /// under it). The units are recorded as applied when returned.
    #[wasm_bindgen(js_name = next)]
    pub fn take_next(&mut self) -> Result<JsValue, JsError> {
        let out = Object::new();
        set(&out, "reset", false.into());
        set(&out, "units", Array::new().into());
        set(&out, "cdvcsConflict", JsValue::NULL);
        set(&out, "ormapConflicts", Array::new().into());
        let state = match driver::read(&self.shared, Command::Read { address: self.address.clone() }) {
            Ok(Reply::State(Some(state))) => *state,
            Ok(Reply::State(None)) => return Ok(out.into()),
            Ok(other) => return Err(JsError::new(&format!("unexpected reply {other:?}"))),
            Err(e) => return Err(JsError::new(&e.to_string())),
        };
        let (reset, units, synthetic) = match state {
            CrdtState::Cdvcs(c) => match plan::plan_cdvcs(&c, &self.log.cdvcs) {
                CdvcsPlan::Wait | CdvcsPlan::UpToDate => {
                    self.reported_heads = None;
                    return Ok(out.into());
                }
                CdvcsPlan::Conflict(conflict) => {
                    if self.reported_heads.as_ref() != Some(&conflict.heads) {
                        self.reported_heads = Some(conflict.heads.clone());
                        let o = Object::new();
                        let ids = |ids: &[ContentId]| -> JsValue {
                            ids.iter().map(|i| JsValue::from(i.to_string())).collect::<Array>().into()
                        };
                        set(&o, "heads", ids(&conflict.heads));
                        set(&o, "mergeBases", ids(&conflict.merge_bases));
                        set(&out, "cdvcsConflict", o.into());
                    }
                    return Ok(out.into());
                }
                CdvcsPlan::Apply { reset, order, from } => {
                    self.reported_heads = None;
                    let units = plan::cdvcs_units(reset, &order, from, self.log.cdvcs);
                    (reset, units, BTreeMap::new())
                }
            },
            CrdtState::Ormap(m) => {
                let planned = plan::plan_ormap(&m, &self.log.entries);
                let conflicts: Array = m
                    .new_conflicts(&planned.diff)
                    .iter()
                    .map(|(k, ids)| -> JsValue {
                        let o = Object::new();
                        set(&o, "key", to_js(k));
                        set(
                            &o,
                            "commits",
                            ids.iter().map(|i| JsValue::from(i.to_string())).collect::<Array>().into(),
                        );
                        o.into()
                    })
                    .collect();
                set(&out, "ormapConflicts", conflicts.into());
                (false, planned.units, BTreeMap::new())
            }
            CrdtState::Lww(r) => match plan::plan_lww(&r, self.log.lww) {
                None => return Ok(out.into()),
                Some((unit, synthetic)) => (false, vec![unit], synthetic),
            },
            CrdtState::Gset(s) => {
                let (units, synthetic) = plan::plan_gset(&s, &self.log.entries);
                (false, units, synthetic)
            }
        };
        // Read the commits the units replay.
        let wanted: Vec<ContentId> = {
            let mut ids: Vec<ContentId> = units
                .iter()
                .flat_map(|u| u.commits.iter().copied())
                .filter(|id| !synthetic.contains_key(id))
                .collect();
            ids.sort();
            ids.dedup();
            ids
        };
        let mut commits = BTreeMap::new();
        for chunk in wanted.chunks(READ_CHUNK) {
            match driver::read(&self.shared, Command::Commits { ids: chunk.to_vec() }) {
                Ok(Reply::Commits(cs)) => commits.extend(cs.into_iter().map(|c| (c.id, c))),
                Ok(other) => return Err(JsError::new(&format!("unexpected reply {other:?}"))),
                // A value not here yet (still being fetched): nothing is recorded; the next change
                // tries again.
                Err(e) => return Err(JsError::new(&e.to_string())),
            }
        }
        let js_units = Array::new();
        for u in &units {
            let cs = Array::new();
            for id in &u.commits {
                let c = Object::new();
                set(&c, "id", id.to_string().into());
                if let Some(txs) = synthetic.get(id) {
                    set(&c, "author", JsValue::NULL);
                    set(&c, "ts", JsValue::NULL);
                    set(&c, "transactions", transactions_to_js(txs));
                } else if let Some(commit) = commits.get(id) {
                    set(&c, "author", commit.author.clone().into());
                    set(&c, "ts", (commit.ts as f64).into());
                    set(&c, "transactions", transactions_to_js(&commit.transactions));
                } else {
                    return Err(JsError::new(&format!("commit {id} is not here yet")));
                }
                cs.push(&c);
            }
            let o = Object::new();
            set(&o, "id", u.id.to_string().into());
            set(&o, "commits", cs.into());
            js_units.push(&o);
        }
        if reset {
            self.log.cdvcs = CdvcsLog::default();
        }
        for u in &units {
            self.log.record(&u.record);
        }
        set(&out, "reset", reset.into());
        set(&out, "units", js_units.into());
        Ok(out.into())
    }
}
