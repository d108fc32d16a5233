//! The acknowledgements a session owes the router, kept in the router's order.
//!
//! rumqttd's router takes acknowledgements for its QoS 1/2 deliveries only in the order
//! it sent them (an ack for anything but the oldest ends the session), while the relay
//! withholds some deliveries from the client (No Local, an expired message, one over the
//! client's Maximum Packet Size) or delivers them at a lower QoS (the publisher's). Those
//! the hub acknowledges for the client. This machine holds each delivery's ack until
//! every older one is done, whoever completes it, so the router always sees them in
//! order; a client that acknowledges out of order (allowed by MQTT 5) is put in order too.
//! No I/O: the relay feeds it and sends the router what it returns.

use std::collections::VecDeque;

use crate::mqtt::{
    Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, QoS,
};

/// The router's QoS 1/2 deliveries to one session, and their acknowledgements.
#[derive(Debug, Default)]
pub struct RouterAcks {
    /// Deliveries waiting for PUBACK (QoS 1) or PUBREC (QoS 2), oldest first, with the
    /// ack once it is known.
    delivered: VecDeque<(u16, Option<Packet>)>,
    /// PUBRELs the router sent, oldest first, with the PUBCOMP once it is known.
    released: VecDeque<(u16, Option<Packet>)>,
    /// QoS 2 deliveries the hub withheld and acknowledged: their PUBREL is answered by
    /// the hub too.
    withheld_qos2: Vec<u16>,
}

impl RouterAcks {
    /// A QoS 1/2 delivery with `pkid` went to the client.
    pub fn delivered(&mut self, pkid: u16) {
        self.delivered.push_back((pkid, None));
    }

    /// A QoS `qos` delivery with `pkid` did not go to the client (or went at QoS 0): the
    /// hub acknowledges it. Acks now due are appended to `out`.
    pub fn withheld(&mut self, pkid: u16, qos: QoS, out: &mut Vec<Packet>) {
        let ack = match qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => Packet::PubAck(
                PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                },
                None,
            ),
            QoS::ExactlyOnce => {
                self.withheld_qos2.push(pkid);
                Packet::PubRec(
                    PubRec {
                        pkid,
                        reason: PubRecReason::Success,
                    },
                    None,
                )
            }
        };
        self.delivered.push_back((pkid, Some(ack)));
        drain(&mut self.delivered, out);
    }

    /// The client sent PUBACK or PUBREC (`ack`) for `pkid`. Returns false when no
    /// delivery waits for it (the router decides what that means). Acks now due are
    /// appended to `out`.
    pub fn client_acked(&mut self, pkid: u16, ack: Packet, out: &mut Vec<Packet>) -> bool {
        let Some(slot) = self
            .delivered
            .iter_mut()
            .find(|(p, done)| *p == pkid && done.is_none())
        else {
            out.push(ack);
            return false;
        };
        slot.1 = Some(ack);
        drain(&mut self.delivered, out);
        true
    }

    /// The router sent PUBREL for `pkid`: true when it goes to the client, false when the
    /// hub answers it (the delivery was withheld). The PUBCOMPs now due are appended to
    /// `out`.
    pub fn router_released(&mut self, pkid: u16, out: &mut Vec<Packet>) -> bool {
        if let Some(at) = self.withheld_qos2.iter().position(|p| *p == pkid) {
            self.withheld_qos2.swap_remove(at);
            self.released.push_back((pkid, Some(pubcomp(pkid))));
            drain(&mut self.released, out);
            return false;
        }
        self.released.push_back((pkid, None));
        true
    }

    /// The client sent PUBCOMP (`comp`) for `pkid`; the PUBCOMPs now due are appended to
    /// `out`.
    pub fn client_completed(&mut self, pkid: u16, comp: Packet, out: &mut Vec<Packet>) {
        match self
            .released
            .iter_mut()
            .find(|(p, done)| *p == pkid && done.is_none())
        {
            Some(slot) => slot.1 = Some(comp),
            None => out.push(comp),
        }
        drain(&mut self.released, out);
    }
}

fn pubcomp(pkid: u16) -> Packet {
    Packet::PubComp(
        PubComp {
            pkid,
            reason: PubCompReason::Success,
        },
        None,
    )
}

/// Moves the done acks at the front of `queue` to `out`.
fn drain(queue: &mut VecDeque<(u16, Option<Packet>)>, out: &mut Vec<Packet>) {
    while let Some((_, Some(_))) = queue.front() {
        if let Some((_, Some(ack))) = queue.pop_front() {
            out.push(ack);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn puback(pkid: u16) -> Packet {
        Packet::PubAck(
            PubAck {
                pkid,
                reason: PubAckReason::Success,
            },
            None,
        )
    }

    fn ids(packets: &[Packet]) -> Vec<(&'static str, u16)> {
        packets
            .iter()
            .map(|p| match p {
                Packet::PubAck(a, _) => ("PUBACK", a.pkid),
                Packet::PubRec(a, _) => ("PUBREC", a.pkid),
                Packet::PubComp(a, _) => ("PUBCOMP", a.pkid),
                _ => ("other", 0),
            })
            .collect()
    }

    #[test]
    fn a_withheld_delivery_is_acknowledged_only_after_the_older_ones() {
        let mut acks = RouterAcks::default();
        let mut out = Vec::new();
        acks.delivered(1);
        acks.withheld(2, QoS::AtLeastOnce, &mut out);
        assert!(out.is_empty(), "2 must wait for 1");
        assert!(acks.client_acked(1, puback(1), &mut out));
        assert_eq!(ids(&out), [("PUBACK", 1), ("PUBACK", 2)]);
    }

    #[test]
    fn acks_the_client_sends_out_of_order_reach_the_router_in_order() {
        let mut acks = RouterAcks::default();
        let mut out = Vec::new();
        for p in 1..=3 {
            acks.delivered(p);
        }
        acks.client_acked(3, puback(3), &mut out);
        acks.client_acked(2, puback(2), &mut out);
        assert!(out.is_empty());
        acks.client_acked(1, puback(1), &mut out);
        assert_eq!(ids(&out), [("PUBACK", 1), ("PUBACK", 2), ("PUBACK", 3)]);
    }

    #[test]
    fn an_unknown_ack_is_passed_on_for_the_router_to_judge() {
        let mut acks = RouterAcks::default();
        let mut out = Vec::new();
        assert!(!acks.client_acked(9, puback(9), &mut out));
        assert_eq!(ids(&out), [("PUBACK", 9)]);
    }

    #[test]
    fn a_withheld_qos_2_delivery_has_its_pubrel_answered_by_the_hub_in_order() {
        let mut acks = RouterAcks::default();
        let mut out = Vec::new();
        acks.delivered(1);
        acks.withheld(2, QoS::ExactlyOnce, &mut out);
        let rec1 = Packet::PubRec(
            PubRec {
                pkid: 1,
                reason: PubRecReason::Success,
            },
            None,
        );
        acks.client_acked(1, rec1, &mut out);
        assert_eq!(ids(&out), [("PUBREC", 1), ("PUBREC", 2)]);
        out.clear();
        assert!(
            acks.router_released(1, &mut out),
            "1's PUBREL is the client's"
        );
        assert!(
            !acks.router_released(2, &mut out),
            "2's PUBREL is the hub's"
        );
        assert!(out.is_empty(), "2's PUBCOMP waits for 1's");
        acks.client_completed(1, pubcomp(1), &mut out);
        assert_eq!(ids(&out), [("PUBCOMP", 1), ("PUBCOMP", 2)]);
    }
}
