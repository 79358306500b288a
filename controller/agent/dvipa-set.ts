// The virtual IPs this node serves: the config's DVIPAs (one per family), plus any an operator added through the REST
// API (cluster-wide: the distributor applies a change on every node). Added ones are persisted in
// the node's state directory so a restarted batond serves them again; the config's one can only
// change with the config. Steering does not care which VIP a flow is to (it matches 4-tuples):
// what changes is which address every node holds on lo and which ports applications may register.
import fs from 'node:fs';
import path from 'node:path';
import { Type, type Static } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { BatonError } from '../errors.js';
import { canonicalIp, IpAddressSchema } from '../flow.js';
import { bounded, parseJson } from '../input.js';
import type { DvipaPolicy } from '../config/dvipa-policy.js';

const Port = Type.Integer({ minimum: 1, maximum: 65535 });
export const DvipaSpecSchema = Type.Object(
  {
    address: IpAddressSchema,
    ports: Type.Array(Port, { minItems: 1, maxItems: 64, uniqueItems: true }),
  },
  { additionalProperties: false },
);
export type DvipaSpec = Static<typeof DvipaSpecSchema>;
const StateSchema = Type.Object({ version: Type.Literal(1), added: Type.Array(DvipaSpecSchema, { maxItems: 256 }) }, { additionalProperties: false });
const checkState = TypeCompiler.Compile(StateSchema);
/** 256 DVIPAs of 64 ports each fit in well under this. */
const MAX_STATE_BYTES = 1024 * 1024;

/** Where a node keeps the DVIPAs added through the API: its state directory, one file per cluster instance and node. */
export function dvipaStateFile(stateDir: string, instance: string, node: string): string {
  return path.join(stateDir, `${instance}-${node}.dvipas.json`);
}

/**
 * The DVIPAs added through the API that a node's state file keeps (none without the file): read
 * like any input, bounded before it is parsed, checked against its schema. Throws E_CONFIG.
 */
export function readAddedDvipas(stateFile: string): DvipaSpec[] {
  if (!fs.existsSync(stateFile)) return [];
  const parsed = parseJson(fs.readFileSync(stateFile), { maxBytes: MAX_STATE_BYTES, maxDepth: 4 });
  if (!parsed.ok) throw new BatonError('E_CONFIG', `DVIPA state ${stateFile} refused (${parsed.reason}): ${parsed.detail}`, { step: 'dvipa' });
  const state = parsed.value;
  if (!checkState.Check(state)) throw new BatonError('E_CONFIG', `DVIPA state ${stateFile} does not match its schema: ${bounded(checkState.Errors(state).First()?.message ?? '', 120)}`, { step: 'dvipa' });
  return state.added;
}

export interface DvipaView extends DvipaSpec {
  source: 'config' | 'api';
}

/** What holding an address takes on this node (dvipa.ts in batond; tests may record calls). */
export interface AddressHolder {
  hold(address: string): Promise<void>;
  release(address: string): Promise<void>;
}

export class DvipaSet {
  private readonly added = new Map<string, DvipaSpec>();

  private readonly primaries: DvipaSpec[];

  constructor(
    /** The cluster file's dvipa: its addresses (canonical, config/cluster.ts), all with its ports. */
    primary: { addresses: readonly string[]; ports: readonly number[] },
    private readonly stateFile: string,
    private readonly holder: AddressHolder,
    /** Which addresses may be a DVIPA (config/dvipa-policy.ts): the allow-list, minus what never can. */
    private readonly policy: Pick<DvipaPolicy, 'refusal' | 'gateways'>,
    /** Told the DVIPAs added through the API after each change, once it is held and kept (keepalived-start.ts). */
    private readonly onChange: (added: DvipaSpec[]) => Promise<void> = async () => undefined,
  ) {
    this.primaries = primary.addresses.map((address) => ({ address, ports: [...primary.ports] }));
  }

  /**
   * Reads what an operator added before a restart and holds every address again. An address the
   * policy refuses now (the allow-list was narrowed, a gateway moved onto it) stops the start:
   * holding it could hijack traffic, dropping it silently would drop its connections.
   */
  async load(): Promise<void> {
    for (const d of readAddedDvipas(this.stateFile)) this.added.set(d.address, d);
    // One read of the routes for them all: each read runs `ip` twice.
    const gateways = this.policy.gateways();
    for (const d of this.all()) {
      const why = this.policy.refusal(d.address, gateways);
      if (why) throw new BatonError('E_CONFIG', `DVIPA ${d.address} (${d.source === 'api' ? `added through the API, kept in ${this.stateFile}` : 'the cluster config'}) refused: ${why}`, { step: 'dvipa' });
    }
    for (const d of this.all()) await this.holder.hold(d.address);
  }

  all(): DvipaView[] {
    return [...this.primaries.map((d) => ({ ...d, source: 'config' as const })), ...[...this.added.values()].map((d) => ({ ...d, source: 'api' as const }))];
  }

  has(address: string): boolean {
    return this.primaries.some((d) => d.address === address) || this.added.has(address);
  }

  /** Every port some DVIPA serves: what target applications may register for. */
  ports(): number[] {
    return [...new Set(this.all().flatMap((d) => d.ports))].sort((a, b) => a - b);
  }

  async add(requested: DvipaSpec): Promise<DvipaView> {
    const ctx = { step: 'dvipa', address: bounded(requested.address, 48) };
    // Canonical, as sockets report it: the address a handoff's socket gives is compared as text.
    const spec = { ...requested, address: canonicalIp(requested.address) };
    const why = this.policy.refusal(spec.address);
    if (why) throw new BatonError('E_CONFIG', why, ctx);
    const existing = this.all().find((d) => d.address === spec.address);
    if (existing) {
      // Idempotent for a retry of the same request (a node that missed it the first time, or
      // whose onChange failed: told again, so a retry repairs it).
      if (existing.source === 'api' && JSON.stringify([...existing.ports].sort()) === JSON.stringify([...spec.ports].sort())) {
        await this.onChange([...this.added.values()]);
        return existing;
      }
      throw new BatonError('E_HANDOFF_STATE', `DVIPA ${spec.address} already exists with ports ${existing.ports.join(',')}`, ctx);
    }
    await this.holder.hold(spec.address);
    this.added.set(spec.address, { address: spec.address, ports: [...spec.ports] });
    this.persist();
    await this.onChange([...this.added.values()]);
    return { ...spec, source: 'api' };
  }

  async remove(address: string): Promise<void> {
    const ctx = { step: 'dvipa', address };
    if (this.primaries.some((d) => d.address === address)) throw new BatonError('E_HANDOFF_STATE', `${address} is the config's DVIPA: change it in the cluster config`, ctx);
    if (!this.added.has(address)) throw new BatonError('E_NOT_FOUND', `no DVIPA ${address}`, ctx);
    await this.holder.release(address);
    this.added.delete(address);
    this.persist();
    await this.onChange([...this.added.values()]);
  }

  private persist(): void {
    fs.mkdirSync(path.dirname(this.stateFile), { recursive: true });
    const tmp = `${this.stateFile}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, `${JSON.stringify({ version: 1, added: [...this.added.values()] }, null, 2)}\n`, { mode: 0o600 });
    fs.renameSync(tmp, this.stateFile);
  }
}
