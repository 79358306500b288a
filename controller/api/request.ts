// One HTTP(S) request whose answer is read up to a bound: what batond's node-to-node forwarding and
// batonctl both need (an answer is input too: a broken or hostile node must not make the reader
// buffer without end). The caller turns a failure into its own error.
import http from 'node:http';
import https from 'node:https';

export interface BoundedAnswer {
  status: number;
  contentType: string;
  body: Buffer;
}

/** Why a request gave no answer: the network (refused, reset, timed out, TLS) or an answer over the bound. */
export class RequestFailed extends Error {
  constructor(
    readonly kind: 'network' | 'too-large',
    message: string,
  ) {
    super(message);
  }
}

export function requestBounded(secure: boolean, options: https.RequestOptions, payload: Buffer | undefined, maxBytes: number): Promise<BoundedAnswer> {
  return new Promise((resolve, reject) => {
    const req = (secure ? https : http).request(options, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > maxBytes) {
          res.destroy();
          reject(new RequestFailed('too-large', `the answer is larger than ${maxBytes} bytes`));
        } else chunks.push(chunk);
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, contentType: String(res.headers['content-type'] ?? ''), body: Buffer.concat(chunks) }));
      res.on('error', (err) => reject(new RequestFailed('network', err.message)));
    });
    req.on('error', (err) => reject(new RequestFailed('network', err.message)));
    req.end(payload);
  });
}
