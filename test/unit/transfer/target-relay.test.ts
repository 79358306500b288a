// The target node's side of a handoff: what batond does to the socket and says to whom, in which
// order, phase by phase (controller/transfer/target/phases.ts). Every message goes through the
// real codecs both ways, the socket steps are recorded (test/helpers/target-world.ts); the lab
// tests do both for real.
import { describe, expect, it } from 'vitest';
import { channelRejections } from '../../../controller/transfer/channel.js';
import { TARGET_EVENTS, TARGET_PHASES, TARGET_TRANSITIONS } from '../../../controller/transfer/target/phases.js';
import { FLOW, STATE, targetWorld } from '../../helpers/target-world.js';

const outOfPhase = () => channelRejections()['out-of-phase'];
const unsolicited = () => channelRejections().unsolicited;

describe('TargetRelay: batond reinstates, completes and makes live; the application gets a live socket', () => {
  it('an application that does not decide: accepted at once, completed, live with the old clock, then handed over', () => {
    const w = targetWorld();
    w.app();
    w.offer('n1', 'c1');
    expect(w.events).toEqual(['reinstate 40000 peeked=GET', 'n1:accept']);
    w.events.length = 0;
    // The routing node transmitted 2 of the 4 tail bytes after its snapshot: they become sent here.
    w.commit('n1', 'c1', 2);
    w.live('n1', 'c1', 777);
    expect(w.events).toEqual([
      'complete fd10 sent=ta received=late',
      'n1:ready',
      'goLive fd10 ts=777',
      // The descriptor before the message naming it; batond's own copy closed after.
      'descriptor fd10 (c1)',
      'app:transferred',
      'release fd10',
    ]);
    // What the application is told, as its SDK decodes it: the routing application's state, and the tail it writes first.
    expect(w.sent.find((s) => s.msg.type === 'transferred')?.msg).toMatchObject({ connId: 'c1', from: 'n1', client: STATE.remote, appState: { user: 'alice' }, blobs: [3, 2] });
    expect(w.relay.page({ limit: 10 }).entries).toMatchObject([{ connId: 'c1', flow: FLOW }]);
    w.relay.close();
  });

  it('a TLS connection: at live, after repair mode, the unsent tail goes out as it is and kernel TLS takes the keys; the application gets no peeked bytes, no tail, and the suite', () => {
    const w = targetWorld();
    const app = w.app({ decides: true });
    w.offer('n1', 'c1', { tls: true });
    // A deciding application is shown no peeked bytes: under TLS they are sealed records.
    expect(w.sent.find((s) => s.msg.type === 'decide')?.msg).toMatchObject({ blobs: [0] });
    w.answer(app, 'decided', { connId: 'c1', accept: true });
    w.commit('n1', 'c1', 2);
    w.live('n1', 'c1', 777);
    expect(w.events.slice(-5)).toEqual(['goLive fd10 ts=777', 'takeSession fd10 unsent=il tls=1.3/aes-128-gcm rx=5 tx=7', 'descriptor fd10 (c1)', 'app:transferred', 'release fd10']);
    expect(w.sent.find((s) => s.msg.type === 'transferred')?.msg).toMatchObject({ connId: 'c1', tls: { version: '1.3', cipher: 'aes-128-gcm' }, blobs: [0, 0] });
    w.relay.close();
  });

  it('a TLS offer to a node without kernel TLS is refused before anything is built (no-kernel-tls)', () => {
    const w = targetWorld({ kernelTls: () => ({ available: false, how: 'kernel 6.18 has no kernel TLS (CONFIG_TLS)' }) });
    w.app();
    w.offer('n1', 'c1', { tls: true });
    expect(w.events).toEqual(['n1:reject']);
    expect(w.reasons()).toEqual(['a TLS connection needs kernel TLS here: kernel 6.18 has no kernel TLS (CONFIG_TLS)']);
    w.relay.close();
  });

  it('live right after accept (the routing node had nothing to commit): the snapshot goes live as it was', () => {
    const w = targetWorld();
    w.app();
    w.offer('n1', 'c');
    w.live('n1', 'c', 5);
    expect(w.events).toEqual(['reinstate 40000 peeked=GET', 'n1:accept', 'goLive fd10 ts=5', 'descriptor fd10 (c)', 'app:transferred', 'release fd10']);
    w.relay.close();
  });

  it('an application that decides is asked first; reinstated only on yes; a no goes back as the reason', () => {
    const w = targetWorld();
    const t = w.app({ decides: true });
    w.offer('n1', 'yes');
    w.offer('n1', 'no');
    expect(w.events).toEqual(['app:decide', 'app:decide']);
    w.answer(t, 'decided', { connId: 'yes', accept: true });
    w.answer(t, 'decided', { connId: 'no', accept: false, reason: 'not my tenant' });
    expect(w.events.slice(2)).toEqual(['reinstate 40000 peeked=GET', 'n1:accept', 'n1:reject']);
    expect(w.reasons()).toEqual(['not my tenant']);
    // A second answer (the transfer is imported: out of phase), or one for an offer refused and gone (unsolicited), changes nothing.
    const before = { outOfPhase: outOfPhase(), unsolicited: unsolicited() };
    w.answer(t, 'decided', { connId: 'yes', accept: true });
    w.answer(t, 'decided', { connId: 'no', accept: true });
    expect(w.events).toHaveLength(5);
    expect({ outOfPhase: outOfPhase(), unsolicited: unsolicited() }).toEqual({ outOfPhase: before.outOfPhase + 1, unsolicited: before.unsolicited + 1 });
    w.relay.close();
  });

  it('capacity: offers beyond what the application holds are refused without asking it; a release makes room', () => {
    const w = targetWorld();
    const t = w.app({ capacity: 1 });
    w.offer('n1', 'a');
    w.offer('n1', 'b');
    expect(w.events).toEqual(['reinstate 40000 peeked=GET', 'n1:accept', 'n1:reject']);
    w.commit('n1', 'a', 4);
    w.live('n1', 'a');
    w.events.length = 0;
    w.offer('n1', 'c');
    expect(w.events).toEqual(['n1:reject']);
    expect(w.relay.released(t, 'a')).toEqual(FLOW);
    w.offer('n1', 'd');
    expect(w.events.slice(1)).toEqual(['reinstate 40000 peeked=GET', 'n1:accept']);
    w.relay.close();
  });

  it("an application that names no capacity gets the cluster's default (limits.targetCapacity); 0 is no limit", () => {
    const w = targetWorld({ targetCapacity: 2 });
    w.app({ capacity: undefined });
    for (const id of ['a', 'b', 'c']) w.offer('n1', id);
    expect(w.events.filter((e) => e.startsWith('n1:'))).toEqual(['n1:accept', 'n1:accept', 'n1:reject']);
    w.relay.close();
    const unbounded = targetWorld({ targetCapacity: 2 });
    unbounded.app({ capacity: 0 });
    for (const id of ['a', 'b', 'c']) unbounded.offer('n1', id);
    expect(unbounded.events.filter((e) => e.startsWith('n1:'))).toEqual(['n1:accept', 'n1:accept', 'n1:accept']);
    unbounded.relay.close();
  });

  it('live without a closing clock: estimated from the snapshot, never behind it', () => {
    const w = targetWorld();
    w.app();
    w.offer('n1', 'c');
    w.commit('n1', 'c', 4);
    w.live('n1', 'c');
    const ts = Number(/goLive fd10 ts=(\d+)/.exec(w.events.join('\n'))![1]);
    expect(ts).toBeGreaterThanOrEqual(STATE.timestamp + 1000);
    expect(ts).toBeLessThan(STATE.timestamp + 2000);
    w.relay.close();
  });

  it('an abort drops the reinstated socket silently; a deciding application is told its offer is gone', () => {
    const w = targetWorld();
    w.app();
    w.offer('n1', 'c');
    w.abort('n1', 'c');
    expect(w.events).toEqual(['reinstate 40000 peeked=GET', 'n1:accept', 'discard fd10']);
    const d = targetWorld();
    d.app({ decides: true });
    d.offer('n1', 'c');
    d.abort('n1', 'c');
    expect(d.events).toEqual(['app:decide', 'app:abort']);
    w.relay.close();
    d.relay.close();
  });

  it('a commit that cannot be applied is refused and the socket dropped', () => {
    const w = targetWorld();
    w.app();
    w.offer('n1', 'c');
    // The tail cannot grow between the snapshot and the freeze.
    w.commit('n1', 'c', 9);
    expect(w.events.slice(2)).toEqual(['discard fd10', 'n1:reject']);
    expect(w.reasons()[0]).toMatch(/commit failed: unsent tail grew from 4 to 9 bytes/);
    w.relay.close();
  });

  it('messages for no transfer here: unsolicited, not out of phase; a commit is answered, nothing else happens', () => {
    const w = targetWorld();
    w.app();
    const before = outOfPhase();
    const unasked = unsolicited();
    w.commit('n1', 'never', 4);
    w.live('n1', 'never', 1);
    w.abort('n1', 'never');
    // A transfer is the link's that offered it: another routing node cannot finish it.
    w.offer('n1', 'c');
    w.live('n3', 'c', 1);
    expect(w.events).toEqual(['n1:reject', 'reinstate 40000 peeked=GET', 'n1:accept']);
    expect(w.reasons()).toEqual(['no pending transfer with this id']);
    expect(outOfPhase()).toBe(before);
    expect(unsolicited()).toBe(unasked + 4);
    w.relay.close();
  });
});

describe('a message out of phase is refused, counted, and changes nothing', () => {
  it('a second commit: rejected, no socket call (the delta is not appended twice); the transfer goes on as after the first', () => {
    const w = targetWorld();
    w.app();
    w.offer('n1', 'c');
    w.commit('n1', 'c', 2);
    const before = outOfPhase();
    w.events.length = 0;
    w.commit('n1', 'c', 2);
    expect(w.events).toEqual(['n1:reject']);
    expect(w.reasons()).toEqual(['commit refused: the transfer is committed']);
    expect(outOfPhase()).toBe(before + 1);
    w.live('n1', 'c', 7);
    expect(w.events.slice(1)).toEqual(['goLive fd10 ts=7', 'descriptor fd10 (c)', 'app:transferred', 'release fd10']);
    // The tail still to write is what the first commit left: 2 bytes.
    expect(w.sent.find((s) => s.msg.type === 'transferred')?.msg.blobs).toEqual([3, 2]);
    w.relay.close();
  });

  it('commit and live before the accept (the distributor has not vouched for the sender yet): refused; its yes still counts', async () => {
    const w = targetWorld();
    w.app();
    w.offer('n3', 'c');
    const before = outOfPhase();
    w.commit('n3', 'c', 4);
    w.live('n3', 'c', 5);
    // Only the commit waits for an answer; neither touched a socket.
    expect(w.events).toEqual(['n3:reject']);
    expect(w.reasons()).toEqual(['commit refused: the transfer is offered']);
    expect(outOfPhase()).toBe(before + 2);
    await w.asked[0]!.answer(true);
    expect(w.events.slice(1)).toEqual(['reinstate 40000 peeked=GET', 'n3:accept']);
    w.relay.close();
  });

  it('commit and live while the application decides: refused, not asked again; its answer still counts', () => {
    const w = targetWorld();
    const t = w.app({ decides: true });
    w.offer('n1', 'c');
    const before = outOfPhase();
    w.commit('n1', 'c', 4);
    w.live('n1', 'c', 5);
    expect(w.events).toEqual(['app:decide', 'n1:reject']);
    expect(outOfPhase()).toBe(before + 2);
    w.answer(t, 'decided', { connId: 'c', accept: true });
    expect(w.events.slice(2)).toEqual(['reinstate 40000 peeked=GET', 'n1:accept']);
    w.relay.close();
  });

  it('a decided for an offer not deciding: refused, nothing happens (not while offered, not once imported)', async () => {
    const w = targetWorld();
    const deciding = w.app({ decides: true });
    // Offered by n3: the application is asked only once the distributor confirmed.
    w.offer('n3', 'early');
    const before = outOfPhase();
    w.answer(deciding, 'decided', { connId: 'early', accept: true });
    expect(w.events).toEqual([]);
    await w.asked[0]!.answer(true);
    expect(w.events).toEqual(['app:decide']);

    const v = targetWorld();
    const batond = v.app({ decides: false });
    v.offer('n1', 'c');
    v.answer(batond, 'decided', { connId: 'c', accept: false, reason: 'too late to say' });
    expect(v.events).toEqual(['reinstate 40000 peeked=GET', 'n1:accept']);
    expect(outOfPhase()).toBe(before + 2);
    w.relay.close();
    v.relay.close();
  });
});

describe('TargetRelay when the application dies mid-transfer', () => {
  it('a live that arrives after the application died releases the flow (it was routed here)', () => {
    const w = targetWorld();
    const t = w.app();
    w.offer('n1', 'c1');
    w.relay.unregister(t);
    expect(w.events).toEqual(['reinstate 40000 peeked=GET', 'n1:accept', 'n1:reject', 'discard fd10']);
    w.live('n1', 'c1');
    expect(w.orphans).toEqual([{ connId: 'c1', flow: FLOW }]);
    w.relay.close();
  });

  it('a transfer the routing node rolled back leaves nothing to release', () => {
    const w = targetWorld();
    const t = w.app();
    w.offer('n1', 'c2');
    w.relay.unregister(t);
    w.abort('n1', 'c2');
    expect(w.orphans).toEqual([]);
    w.relay.close();
  });

  it('a commit that arrives after the application died is answered with a reject (the client stays frozen until then)', () => {
    const w = targetWorld();
    const t = w.app();
    w.offer('n1', 'c');
    w.relay.unregister(t);
    w.events.length = 0;
    w.commit('n1', 'c', 4);
    expect(w.events).toEqual(['n1:reject']);
    expect(w.reasons()).toEqual(['target application t went away', 'commit refused: the target application went away']);
    // Rolled back at the routing node: a live no longer comes, and none releases anything.
    w.live('n1', 'c');
    expect(w.orphans).toEqual([]);
    w.relay.close();
  });

  it("an orphan's message on another link is unsolicited: it releases nothing, and the orphan stays for its own link", () => {
    const w = targetWorld();
    const t = w.app();
    w.offer('n1', 'c');
    w.relay.unregister(t);
    w.events.length = 0;
    const unasked = unsolicited();
    w.live('n3', 'c');
    w.commit('n3', 'c', 4);
    expect(w.orphans).toEqual([]);
    expect(w.events).toEqual(['n3:reject']);
    expect(unsolicited()).toBe(unasked + 2);
    w.live('n1', 'c');
    expect(w.orphans).toEqual([{ connId: 'c', flow: FLOW }]);
    w.relay.close();
  });

  it('a transfer that was never accepted leaves no orphan: the reject it gets is the answer to its offer', () => {
    const w = targetWorld();
    const t = w.app({ decides: true });
    w.offer('n1', 'c');
    w.relay.unregister(t);
    expect(w.events).toEqual(['app:decide', 'n1:reject']);
    const unasked = unsolicited();
    w.live('n1', 'c');
    expect(w.orphans).toEqual([]);
    expect(unsolicited()).toBe(unasked + 1);
    w.relay.close();
  });
});

describe('the transition table', () => {
  it('has a row for every phase, only known events, and leads only to phases or the end; live is the last', () => {
    expect(Object.keys(TARGET_TRANSITIONS)).toEqual([...TARGET_PHASES]);
    for (const row of Object.values(TARGET_TRANSITIONS)) {
      for (const [event, outcomes] of Object.entries(row)) {
        expect(TARGET_EVENTS).toContain(event);
        for (const o of outcomes as readonly string[]) expect([...TARGET_PHASES, 'ended']).toContain(o);
      }
    }
    expect(TARGET_TRANSITIONS.live).toEqual({});
  });
});
