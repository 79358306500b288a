// A lab node's REST API as an operator reaches it: curl over HTTPS, the node's certificate checked
// against the lab's CA, with the token of the lab's admin or read operator. Every test that talks
// to the API goes through here, so TLS and token details live in one place.
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { promisify } from 'node:util';
import { API_PORT, apiReadTokenFile, apiTokenFile, labCaFile } from '../../controller/lab/cluster.js';
import type { LabDescription } from '../../controller/lab/description.js';

const run = promisify(execFile);

/** Whose token goes with the request: the lab's operators, none, or a token given as is. */
export type As = 'admin' | 'read' | null | { token: string };

export interface ApiAnswer {
  status: number;
  type: string;
  // What the API answered: parsed JSON, else the text (Prometheus, HTML).
  body: any;
}

export function labToken(lab: LabDescription, scope: 'admin' | 'read'): string {
  return fs.readFileSync(scope === 'admin' ? apiTokenFile(lab) : apiReadTokenFile(lab), 'utf8').trim();
}

function node(lab: LabDescription, name: string) {
  const n = lab.nodes.find((x) => x.name === name);
  if (!n) throw new Error(`no node ${name} in lab ${lab.prefix}`);
  return n;
}

/** The API's URL on a node of the lab. */
export function apiUrl(lab: LabDescription, on: string, urlPath: string, scheme = 'https'): string {
  return `${scheme}://${node(lab, on).address}:${API_PORT}${urlPath}`;
}

/** curl's argument list, run in namespace ns (the node's own by default). */
function curlArgs(lab: LabDescription, on: string, urlPath: string, opts: { method?: string; body?: string; as?: As; ns?: string; scheme?: string }): string[] {
  const args = ['netns', 'exec', opts.ns ?? node(lab, on).ns, 'curl', '-s', '-L', '--max-time', '30', '--cacert', labCaFile(lab), '-o', '-', '-w', '\n%{http_code} %{content_type}', '-X', opts.method ?? 'GET'];
  const as = opts.as === undefined ? 'admin' : opts.as;
  if (as !== null) args.push('-H', `authorization: Bearer ${typeof as === 'string' ? labToken(lab, as) : as.token}`);
  if (opts.body !== undefined) args.push('-H', 'content-type: application/json', '--data-binary', opts.body);
  args.push(apiUrl(lab, on, urlPath, opts.scheme));
  return args;
}

function answer(stdout: string): ApiAnswer {
  const cut = stdout.lastIndexOf('\n');
  const [status, type] = stdout.slice(cut + 1).split(' ');
  const text = stdout.slice(0, cut);
  let body: any = text;
  try {
    body = JSON.parse(text);
  } catch {
    // Prometheus text, HTML: the test looks at the string.
  }
  return { status: Number(status), type: type ?? '', body };
}

/**
 * A request to node on's API from inside a lab namespace (the node's own unless ns), as the lab's
 * admin operator unless as says otherwise. status 0: no HTTP answer at all (curl could not connect
 * or the TLS handshake failed).
 */
export async function apiCurl(lab: LabDescription, on: string, urlPath: string, opts: { method?: string; body?: string; as?: As; ns?: string; scheme?: string } = {}): Promise<ApiAnswer> {
  const { stdout } = await run('ip', curlArgs(lab, on, urlPath, opts), { maxBuffer: 16 * 1024 * 1024 }).catch((err: { stdout?: string }) => ({ stdout: err.stdout ?? '\n000 ' }));
  return answer(stdout);
}

/** A node's Prometheus text, read as the lab's read-only operator (what a scraper holds). */
export function metricsOf(lab: LabDescription, on: string): string {
  const res = answer(execFileSync('ip', curlArgs(lab, on, '/metrics', { as: 'read' }), { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 }));
  if (res.status !== 200) throw new Error(`GET /metrics on ${on}: ${res.status} ${String(res.body).slice(0, 300)}`);
  return String(res.body);
}

/**
 * One series' value in Prometheus text: the line of `name` whose labels include `labels` (the
 * node label may be left out); 0 when there is none, as a counter is shown only once it counted.
 */
export function sampleOf(metrics: string, name: string, labels: Record<string, string>): number {
  for (const line of metrics.split('\n')) {
    const m = /^([A-Za-z_:][\w:]*)\{(.*)\} (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const has = new Map([...m[2]!.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1], l[2]]));
    if (Object.entries(labels).every(([k, v]) => has.get(k) === v)) return Number(m[3]);
  }
  return 0;
}
