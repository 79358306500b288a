// Mutual TLS for node↔node links. Every batond holds a certificate from the cluster CA naming it
// (CN and SAN); a peer is accepted only if its certificate chains to that CA, names a node of the
// cluster file, and the connection comes from that node's management address. TLS gives the
// rest: a forged, replayed or tampered transfer message fails the handshake or a record's MAC and
// the link closes before any message is decoded, so it never creates a socket or a route.
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import tls from 'node:tls';
import { BatonError } from '../errors.js';
import type { ClusterConfig, NodeConfig } from '../config/cluster.js';

export interface PeerTlsMaterial {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

export function loadPeerTls(config: ClusterConfig, self: NodeConfig): PeerTlsMaterial {
  const read = (what: string, file: string) => {
    try {
      return fs.readFileSync(file);
    } catch (err) {
      throw new BatonError('E_CONFIG', `cannot read the ${what} ${file}: ${(err as Error).message} (scripts/certs.sh makes them)`, { node: self.name, step: 'tls' });
    }
  };
  const material = { ca: read('cluster CA', config.tls.caFile), cert: read('node certificate', self.certFile), key: read('node key', self.keyFile) };
  // Fail at start, not at the first handoff: the pair must load, chain to the CA and name this node.
  let cert: X509Certificate;
  try {
    tls.createSecureContext(material);
    cert = new X509Certificate(material.cert);
  } catch (err) {
    throw new BatonError('E_CONFIG', `node certificate ${self.certFile} / key ${self.keyFile} unusable: ${(err as Error).message}`, { node: self.name, step: 'tls' });
  }
  if (!cert.verify(new X509Certificate(material.ca).publicKey)) {
    throw new BatonError('E_CONFIG', `node certificate ${self.certFile} is not signed by the cluster CA ${config.tls.caFile}`, { node: self.name, step: 'tls' });
  }
  const cn = /^CN=(.*)$/m.exec(cert.subject)?.[1];
  if (cn !== self.name) throw new BatonError('E_CONFIG', `node certificate ${self.certFile} names ${cn ?? 'nobody'}, not ${self.name}`, { node: self.name, step: 'tls' });
  return material;
}

/** The cluster node a verified peer certificate names, if it names one. */
export function nodeOfCertificate(config: ClusterConfig, cert: PeerCertificate): NodeConfig | undefined {
  const cn = cert.subject?.CN;
  return typeof cn === 'string' ? config.nodes.find((n) => n.name === cn) : undefined;
}

/**
 * Server side: the peer's certificate must chain to the cluster CA, name a node, and come from
 * that node's address. Returns the node, or why it is refused.
 */
export function authenticatePeer(config: ClusterConfig, socket: TLSSocket): { node: NodeConfig } | { refused: string } {
  if (!socket.authorized) return { refused: `certificate not trusted: ${String(socket.authorizationError ?? 'none presented')}` };
  const node = nodeOfCertificate(config, socket.getPeerCertificate());
  if (!node) return { refused: `certificate names ${String(socket.getPeerCertificate().subject?.CN)}, not a node of the cluster` };
  if (node.address !== socket.remoteAddress) return { refused: `certificate names ${node.name} but the connection comes from ${socket.remoteAddress}, not ${node.address}` };
  return { node };
}

/** Client side: the server must present the certificate of the node we meant to reach. */
export function expectNode(node: NodeConfig): (host: string, cert: PeerCertificate) => Error | undefined {
  return (_host, cert) => (cert.subject?.CN === node.name ? undefined : new Error(`peer at ${node.address} presented a certificate for ${String(cert.subject?.CN)}, expected ${node.name}`));
}

export const PEER_TLS_OPTIONS = { minVersion: 'TLSv1.3' as const };
