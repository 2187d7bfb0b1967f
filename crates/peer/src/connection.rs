//! One connection's pipeline, the same wherever a connection runs: the node's websocket tasks,
//! the in-process stage, and the deterministic simulation.
//!
//! ```text
//!  frame ─► decode_frame ─► chain.inbound ─► items for the core (messages, commands)
//!  frame ◄─ encode        ◄─ chain.outbound ◄─ items from the core (messages, replies, events)
//! ```
//!
//! [`decode_frame`] is the one decode policy (the core's `Input::Received` uses it too): an unknown
//! message kind is answered with an `error` and the connection stays; any other bad frame closes
//! the connection with a reason. Remote stage commands get node-wide ids on the way in and their
//! client's ids back on the way out. Sans-IO: the driver moves the bytes.

use std::collections::HashMap;

use crate::middleware::{Chain, Flow, Item};
use crate::proto::{CommandId, FrameError, Message, PROTOCOL_VERSION, Refusal};

/// What to do with a frame that did not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadFrame {
    /// Answer with this message and go on (an unknown kind: a newer peer may speak it).
    Answer(Box<Message>),
    /// Close the connection: the reason (sent to the remote in a `close` message and the close
    /// frame) and what to count it as.
    Close(Refusal, String),
}

/// Decodes a frame; what to do if it does not (see the module docs).
pub fn decode_frame(frame: &[u8]) -> Result<Message, BadFrame> {
    Message::decode(frame).map_err(|e| match e {
        FrameError::UnknownKind(kind) => BadFrame::Answer(Box::new(Message::Error {
            reason: format!("unknown message kind {kind:?}; ignored"),
        })),
        FrameError::UnsupportedVersion(v) => BadFrame::Close(
            Refusal::UnsupportedVersion,
            format!("frame of protocol version {v}; this peer speaks version {PROTOCOL_VERSION}"),
        ),
        other => BadFrame::Close(Refusal::MalformedFrame, other.to_string()),
    })
}

impl BadFrame {
    /// What to count the bad frame as.
    pub fn refusal(&self) -> Refusal {
        match self {
            BadFrame::Answer(_) => Refusal::UnknownKind,
            BadFrame::Close(why, _) => *why,
        }
    }
}

/// What an inbound frame or item came to.
#[derive(Debug, Default)]
pub struct Inbound {
    /// Items for the core: messages, and commands with node-wide ids.
    pub to_core: Vec<Item>,
    /// Messages to send back to the remote at once (answers injected by the chain or the decoder).
    pub to_remote: Vec<Item>,
    /// Close the connection with this reason (after sending `to_remote`).
    pub close: Option<(Refusal, String)>,
    /// The frame was refused (closing, or answered with an error): what to count.
    pub refused: Option<Refusal>,
}

/// A connection's pipeline (see the module docs).
#[derive(Debug)]
pub struct Connection {
    chain: Chain,
    /// Remote commands in flight: node-wide id -> the client's id.
    commands: HashMap<CommandId, CommandId>,
}

impl Connection {
    /// A connection through `chain`.
    pub fn new(chain: Chain) -> Connection {
        Connection { chain, commands: HashMap::new() }
    }

    /// A frame from the remote: decoded, then through the chain. `next_command` gives node-wide
    /// ids to commands the chain makes of it (remote stage commands).
    pub fn receive_frame(&mut self, frame: &[u8], next_command: impl FnMut() -> CommandId) -> Inbound {
        match decode_frame(frame) {
            Ok(msg) => self.receive(Item::Message(msg), next_command),
            Err(BadFrame::Answer(msg)) => Inbound {
                to_remote: vec![Item::Message(*msg)],
                refused: Some(Refusal::UnknownKind),
                ..Inbound::default()
            },
            Err(BadFrame::Close(why, detail)) => {
                let reason = crate::proto::CloseReason::new(why, detail).to_string();
                Inbound {
                    to_remote: vec![Item::Message(Message::Close { reason: reason.clone() })],
                    close: Some((why, reason)),
                    refused: Some(why),
                    ..Inbound::default()
                }
            }
        }
    }

    /// An item from the remote side (a decoded message, or a stage's command) through the chain.
    pub fn receive(&mut self, item: Item, mut next_command: impl FnMut() -> CommandId) -> Inbound {
        let Flow { up, down } = self.chain.inbound(item);
        let to_core = up
            .into_iter()
            .map(|item| match item {
                // A command that arrived over the wire: a node-wide id, answered with the client's.
                Item::Command { id: theirs, cmd } => {
                    let id = next_command();
                    self.commands.insert(id, theirs);
                    Item::Command { id, cmd }
                }
                other => other,
            })
            .collect();
        Inbound { to_core, to_remote: down, close: None, refused: None }
    }

    /// An item from the core toward the remote, through the chain: what to send (`down`), and
    /// what the chain injected toward the core (`up`). A reply to a command this connection did
    /// not forward is dropped.
    pub fn send(&mut self, item: Item) -> Flow {
        let item = match item {
            Item::Reply { id, result } => match self.commands.remove(&id) {
                Some(theirs) => Item::Reply { id: theirs, result },
                None => return Flow::default(),
            },
            other => other,
        };
        self.chain.outbound(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::{Emit, Middleware};

    #[derive(Debug)]
    struct DropCustom;

    impl Middleware for DropCustom {
        fn inbound(&mut self, item: Item, emit: &mut Emit) {
            match item {
                Item::Message(Message::Custom { .. }) => {
                    emit.down(Item::Message(Message::Error { reason: "no custom".into() }))
                }
                other => emit.up(other),
            }
        }
    }

    #[test]
    fn frames_are_decoded_once_and_run_through_the_chain() {
        let mut c = Connection::new(Chain::new(vec![Box::new(DropCustom)]));
        let ack = Message::PublishAck { id: 3 };
        let r = c.receive_frame(&ack.encode(), || unreachable!());
        assert!(matches!(&r.to_core[..], [Item::Message(m)] if *m == ack) && r.close.is_none());
        let custom = Message::Custom { tag: "t".into(), data: vec![].into() };
        let r = c.receive_frame(&custom.encode(), || unreachable!());
        assert!(r.to_core.is_empty());
        assert!(matches!(&r.to_remote[..], [Item::Message(Message::Error { .. })]));
        let r = c.receive_frame(b"\x00garbage", || unreachable!());
        assert!(matches!(r.close, Some((Refusal::MalformedFrame, _))), "{r:?}");
        assert!(matches!(&r.to_remote[..], [Item::Message(Message::Close { .. })]));
    }

    #[test]
    fn remote_commands_get_node_wide_ids_and_replies_the_clients() {
        let mut c = Connection::new(Chain::new(vec![]));
        let cmd = crate::proto::Command::Status;
        let r = c.receive(Item::Command { id: 7, cmd }, || 1000);
        assert!(matches!(&r.to_core[..], [Item::Command { id: 1000, .. }]));
        let flow = c.send(Item::Reply { id: 1000, result: Ok(crate::proto::Reply::Done) });
        assert!(matches!(&flow.down[..], [Item::Reply { id: 7, .. }]));
        let flow = c.send(Item::Reply { id: 1000, result: Ok(crate::proto::Reply::Done) });
        assert!(flow.down.is_empty(), "answered once");
    }
}
