//! G-Set: a grow-only set of values. Elements travel inline in the ops (no commit records), which
//! suits small collections.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::commit::CrdtKind;
use crate::error::{OpError, ValidationError};
use crate::{ContentId, Crdt, Value};

/// A grow-only set replica.
#[derive(Clone, Default, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct GSet {
    elements: BTreeSet<Value>,
}

/// A G-Set op: elements to add.
#[derive(Clone, Default, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct GSetOp {
    /// The elements.
    pub elements: BTreeSet<Value>,
}

impl GSet {
    /// Adds an element; returns the op to replicate.
    pub fn add(&mut self, element: Value) -> Result<GSetOp, OpError> {
        if !element.within_depth_limit() {
            return Err(OpError::TooDeep);
        }
        let op = GSetOp { elements: BTreeSet::from([element]) };
        self.elements.extend(op.elements.iter().cloned());
        Ok(op)
    }

    /// The elements, sorted.
    pub fn elements(&self) -> &BTreeSet<Value> {
        &self.elements
    }

    /// Whether the element is in the set.
    pub fn contains(&self, element: &Value) -> bool {
        self.elements.contains(element)
    }

    /// The elements of `op` this set did not have before applying it.
    pub fn new_elements<'a>(&'a self, op: &'a GSetOp) -> impl Iterator<Item = &'a Value> + 'a {
        op.elements.iter().filter(|e| !self.elements.contains(*e))
    }
}

impl Crdt for GSet {
    type Op = GSetOp;
    const KIND: CrdtKind = CrdtKind::Gset;

    fn validate_op(&self, op: &GSetOp) -> Result<(), ValidationError> {
        if op.elements.iter().all(Value::within_depth_limit) { Ok(()) } else { Err(ValidationError::TooDeep) }
    }

    fn apply(&mut self, op: &GSetOp) -> Result<bool, ValidationError> {
        self.validate_op(op)?;
        let before = self.elements.len();
        self.elements.extend(op.elements.iter().cloned());
        Ok(self.elements.len() != before)
    }

    fn state_op(&self) -> GSetOp {
        GSetOp { elements: self.elements.clone() }
    }

    fn commit_ids(_op: &GSetOp) -> Vec<ContentId> {
        Vec::new()
    }
}
