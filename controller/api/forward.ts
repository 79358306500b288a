// Requests about another node's state go to that node's API. Over HTTPS (the default) the
// request is made with this node's certificate as a TLS client certificate, and the other node's
// certificate must chain to the cluster CA and name the node meant: the receiving node authorises
// it by that certificate (access.ts), and no token crosses between nodes. It names the operator
// it acts for, for the receiving node's log. With api.insecurePlaintext there is no certificate
// to prove anything with: the operator's own Authorization header goes along, as it came.
//
// A forwarded request carries a header so it is never forwarded again (no loops between two
// confused nodes). The answer is read up to MAX_ANSWER_BYTES and parsed with its depth bounded:
// another node is trusted to act, not to be free of bugs.
import http from 'node:http';
import https from 'node:https';
import { BatonError } from '../errors.js';
import { bounded, errorText, parseJson } from '../input.js';
import type { ClusterConfig, NodeConfig } from '../config/cluster.js';
import { expectNode, type PeerTlsMaterial } from '../transfer/peer-tls.js';
import { OPERATOR_HEADER } from './access.js';
import { type BoundedAnswer, RequestFailed, requestBounded } from './request.js';
import { hostPort } from '../flow.js';

export const FORWARDED_HEADER = 'x-baton-forwarded-by';
/** Set by the distributor when it fans a cluster-wide change out: apply it on this node only. */
export const LOCAL_ONLY_HEADER = 'x-baton-local-only';
const FORWARD_TIMEOUT_MS = 40_000;
/** A drain's report of 10,000 connections is about a megabyte. */
const MAX_ANSWER_BYTES = 16 * 1024 * 1024;

export interface Forwarded {
  status: number;
  contentType: string;
  body: unknown;
}

/** On whose behalf a request goes to another node. */
export interface Caller {
  /** The operator's name, for the other node's log (absent: a node forwarding for nobody it named). */
  operator?: string;
  /** The operator's Authorization header: sent only over plain HTTP, where no certificate can stand for it. */
  authorization?: string;
}

/** What another node's refusal said, bounded: it goes into this node's answer and log. */
export function problemDetail(status: number, body: unknown): string {
  const detail = (body as { detail?: unknown } | null)?.detail;
  return typeof detail === 'string' ? bounded(detail, 300) : `HTTP ${status}`;
}

/** The base URL of a node's API, as this cluster serves it. */
export function apiBase(config: ClusterConfig, node: NodeConfig): string {
  return `${config.api.insecurePlaintext ? 'http' : 'https'}://${hostPort(node.address, config.api.port)}`;
}

export class NodeForwarder {
  private readonly agent: http.Agent;

  /** tls: this node's certificate, key and the cluster CA; undefined for plain HTTP. */
  constructor(
    private readonly config: ClusterConfig,
    private readonly self: NodeConfig,
    private readonly tls: PeerTlsMaterial | undefined,
  ) {
    // Kept alive: a drain sends a request per connection, a handshake each would add up.
    this.agent = tls ? new https.Agent({ keepAlive: true, maxSockets: 16, ca: tls.ca, cert: tls.cert, key: tls.key, minVersion: 'TLSv1.3' }) : new http.Agent({ keepAlive: true, maxSockets: 16 });
  }

  async send(node: NodeConfig, request: { method: string; path: string; body?: unknown }, caller: Caller, extraHeaders: Record<string, string> = {}): Promise<Forwarded> {
    // The body was parsed by this API, so its size and depth are bounded: stringifying is safe.
    const payload = request.body !== undefined ? Buffer.from(JSON.stringify(request.body)) : undefined;
    const headers: Record<string, string | number> = {
      [FORWARDED_HEADER]: this.self.name,
      ...(caller.operator !== undefined ? { [OPERATOR_HEADER]: caller.operator } : {}),
      ...extraHeaders,
      ...(payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {}),
      ...(this.tls === undefined && caller.authorization !== undefined ? { authorization: caller.authorization } : {}),
    };
    const options: https.RequestOptions = {
      host: node.address,
      port: this.config.api.port,
      method: request.method,
      path: request.path,
      headers,
      agent: this.agent,
      // From our management address: the other node checks the certificate's node connects from there.
      localAddress: this.self.address,
      signal: AbortSignal.timeout(FORWARD_TIMEOUT_MS),
      ...(this.tls ? { servername: node.name, checkServerIdentity: expectNode(node) } : {}),
    };
    const base = apiBase(this.config, node);
    const unreachable = (err: unknown) => new BatonError('E_PEER', `node ${node.name}'s API at ${base} is unreachable: ${errorText(err)}`, { node: node.name, step: 'forward' });
    let answer: BoundedAnswer;
    try {
      answer = await requestBounded(this.tls !== undefined, options, payload, MAX_ANSWER_BYTES);
    } catch (err) {
      if (err instanceof RequestFailed && err.kind === 'too-large') throw new BatonError('E_PEER', `node ${node.name} answered more than ${MAX_ANSWER_BYTES} bytes`, { node: node.name, step: 'forward' });
      throw unreachable(err);
    }
    if (answer.status === 0) answer.status = 502;
    if (answer.contentType === '') answer.contentType = 'application/json';
    if (!/^application\/(problem\+)?json/.test(answer.contentType)) {
      return { status: answer.status, contentType: bounded(answer.contentType, 100), body: bounded(answer.body.toString('utf8'), 2000) };
    }
    const parsed = parseJson(answer.body, { maxBytes: MAX_ANSWER_BYTES });
    if (!parsed.ok) throw new BatonError('E_PEER', `node ${node.name} answered ${answer.status} with a body that is ${parsed.reason}: ${parsed.detail}`, { node: node.name, step: 'forward' });
    return { status: answer.status, contentType: answer.contentType, body: parsed.value };
  }

  close(): void {
    this.agent.destroy();
  }
}
