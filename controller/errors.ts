// Every error Baton raises, defined once with a stable code. Context says which connection,
// which node and which step, so a log line alone explains the failure.

export type BatonErrorCode =
  | 'E_NATIVE'           // a kernel call through native/ failed (errno in context)
  | 'E_BPF'              // libbpf or a BPF map operation failed
  | 'E_CONFIG'           // configuration or command-line input is invalid
  | 'E_IN_USE'           // an address or socket path batond listens on is held by another process
  | 'E_PROTOCOL'         // a message failed framing or schema validation
  | 'E_PEER'             // a peer node could not be reached or broke the connection
  | 'E_TIMEOUT'          // a step did not finish within its bound
  | 'E_REJECTED'         // the target refused the transfer
  | 'E_NO_TARGET'        // no target application is registered for the requested port
  | 'E_HANDOFF_STATE'    // the socket cannot be handed off in its current state
  | 'E_QUOTA'            // a routing-table quota refused a new handed-off connection (total, or per client address)
  | 'E_NOT_FOUND'        // the connection, node or target an operator named does not exist
  | 'E_UNAUTHORIZED'     // a REST request without a valid operator token (or node certificate)
  | 'E_FORBIDDEN'        // a REST request whose operator's scope does not allow it
  | 'E_LAB';             // building or tearing down the namespace lab failed

export interface ErrorContext {
  connId?: string;
  node?: string;
  step?: string;
  errno?: number;
  [key: string]: unknown;
}

export class BatonError extends Error {
  readonly code: BatonErrorCode;
  readonly context: ErrorContext;

  constructor(code: BatonErrorCode, message: string, context: ErrorContext = {}, options?: { cause?: unknown }) {
    const where = [context.node && `node=${context.node}`, context.connId && `conn=${context.connId}`, context.step && `step=${context.step}`]
      .filter(Boolean)
      .join(' ');
    super(where ? `${message} (${where})` : message, options);
    this.name = 'BatonError';
    this.code = code;
    this.context = context;
  }
}

export function isBatonError(err: unknown, code?: BatonErrorCode): err is BatonError {
  return err instanceof BatonError && (code === undefined || err.code === code);
}
