// Every error Baton raises, defined once, in one table: its stable code, the HTTP status the REST
// API answers it with, whether a routing application's handoff() moves on to its next target on
// it, and what it means. The code union, the `failed` message's wire literal (transfer/messages.ts),
// the API's problem+json status (api/problem.ts), the SDK's retry set (sdk/router.ts) and the
// error table of docs/api.md (checked by test/unit/errors.test.ts) all derive from it. Context
// says which connection, which node and which step, so a log line alone explains the failure.

export interface ErrorInfo {
  /** What the REST API answers with. */
  status: number;
  /** handoff() given several targets tries the next one after this failure (the connection is still the router's). */
  retryable: boolean;
  description: string;
}

export const ERRORS = {
  E_NATIVE: { status: 500, retryable: false, description: 'a kernel call through native/ failed (errno in context)' },
  E_BPF: { status: 500, retryable: false, description: 'libbpf or a BPF map operation failed' },
  E_CONFIG: { status: 400, retryable: false, description: 'configuration, command-line or request input is invalid' },
  E_IN_USE: { status: 409, retryable: false, description: 'an address or socket path batond listens on is held by another process' },
  E_PROTOCOL: { status: 400, retryable: false, description: 'a message failed framing or schema validation' },
  E_PEER: { status: 502, retryable: true, description: 'a peer node could not be reached or broke the connection' },
  E_TIMEOUT: { status: 504, retryable: true, description: 'a step did not finish within its bound' },
  E_REJECTED: { status: 409, retryable: true, description: 'the target (or the application serving a connection) refused' },
  E_NO_TARGET: { status: 409, retryable: true, description: 'no target application serves the requested port or instance' },
  E_HANDOFF_STATE: { status: 409, retryable: false, description: 'not possible in the current state (of a socket, a connection, a DVIPA)' },
  E_QUOTA: { status: 429, retryable: false, description: 'a routing-table quota refused a new handed-off connection (total, or per client address)' },
  E_NOT_FOUND: { status: 404, retryable: false, description: 'the connection, node, target or DVIPA named does not exist' },
  E_UNAUTHORIZED: { status: 401, retryable: false, description: 'a REST request without a valid operator token (or node certificate)' },
  E_FORBIDDEN: { status: 403, retryable: false, description: "a REST request whose operator's scope does not allow it" },
  E_TLS: { status: 502, retryable: false, description: 'the TLS session of a transferred connection ended: an alert from the client, or a record kernel TLS cannot take' },
  E_LAB: { status: 500, retryable: false, description: 'building or tearing down the namespace lab failed' },
} as const satisfies Record<string, ErrorInfo>;

export type BatonErrorCode = keyof typeof ERRORS;

/** Every code, in the table's order: what the `failed` message's schema accepts. */
export const ERROR_CODES = Object.keys(ERRORS) as BatonErrorCode[];

export function isBatonErrorCode(value: unknown): value is BatonErrorCode {
  return typeof value === 'string' && Object.hasOwn(ERRORS, value);
}

/** Does handoff() move on to its next target after this failure? */
export function isRetryable(code: BatonErrorCode): boolean {
  return ERRORS[code].retryable;
}

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
  /** The message without the context suffix: what travels in a `failed` message's reason. */
  readonly detail: string;

  constructor(code: BatonErrorCode, message: string, context: ErrorContext = {}, options?: { cause?: unknown }) {
    const where = [context.node && `node=${context.node}`, context.connId && `conn=${context.connId}`, context.step && `step=${context.step}`]
      .filter(Boolean)
      .join(' ');
    super(where ? `${message} (${where})` : message, options);
    this.name = 'BatonError';
    this.code = code;
    this.context = context;
    this.detail = message;
  }
}

export function isBatonError(err: unknown, code?: BatonErrorCode): err is BatonError {
  return err instanceof BatonError && (code === undefined || err.code === code);
}
