// Operator moves (REST API, `batonctl move`, a node drain): the application serving a connection
// here is asked to move it (move), and answers when it has (moved). Only the application knows
// when its conversation can resume elsewhere; batond waits for its answer, bounded in time.
import { BatonError } from '../../errors.js';
import type { Logger } from '../../log.js';
import { countRefusedMessage } from '../channel.js';
import type { Message } from '../messages.js';
import type { TargetApp } from './applications.js';
import type { ServedConnection } from './served.js';
import { logSparsely } from '../../input.js';

export class OperatorMoves {
  /** Moves waiting for the application's answer, by handoff id. */
  private readonly moving = new Map<string, { app: TargetApp; settle: (err?: Error) => void }>();

  constructor(private readonly log: Logger) {}

  /**
   * Asks the application serving o to move it to node. Resolves once the application reports the
   * move done; rejects with its reason, or when it does not answer within timeoutMs.
   */
  request(o: ServedConnection, node: string, timeoutMs: number): Promise<void> {
    const { connId, app } = o;
    if (this.moving.has(connId)) return Promise.reject(new BatonError('E_HANDOFF_STATE', 'a move of this connection is already in progress', { connId, step: 'move' }));
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => settle(new BatonError('E_TIMEOUT', `application ${app.name} did not move the connection within ${timeoutMs} ms`, { connId, step: 'move', node })), timeoutMs);
      const settle = (err?: Error) => {
        clearTimeout(timer);
        this.moving.delete(connId);
        if (err) reject(err);
        else resolve();
      };
      this.moving.set(connId, { app, settle });
      app.channel.send('move', { connId, node });
    });
  }

  /** The application's answer. */
  moved(app: TargetApp, msg: Message<'moved'>): void {
    const m = this.moving.get(msg.connId);
    if (!m || m.app !== app) {
      // Late (the move timed out) or never asked of this application: counted, logged sparsely.
      const n = countRefusedMessage('unsolicited');
      if (logSparsely(n)) this.log.warn({ connId: msg.connId, app: app.name, unsolicited: n }, 'move answer for no move in progress');
      return;
    }
    m.settle(msg.ok ? undefined : new BatonError('E_REJECTED', msg.reason ?? 'the application did not move the connection', { connId: msg.connId, step: 'move' }));
  }

  /** The application went away: its moves fail now rather than at their timeout. */
  appGone(app: TargetApp): void {
    for (const m of this.moving.values()) if (m.app === app) m.settle(new BatonError('E_PEER', `target application ${app.name} went away`, { step: 'move' }));
  }
}
