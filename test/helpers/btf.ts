// Reads the BTF of a compiled BPF object (bpftool's JSON dump): what the C compiler laid out,
// so that a test compares the TypeScript mirror of bpf/baton.h with the compiler, not with
// numbers restated by hand.
import { execFileSync } from 'node:child_process';

interface BtfMember {
  name: string;
  type_id: number;
  bits_offset: number;
}

interface BtfType {
  id: number;
  kind: string;
  name: string;
  size?: number;
  type_id?: number;
  nr_elems?: number;
  members?: BtfMember[];
  values?: { name: string; val: number }[];
  vars?: { type_id: number }[];
}

export class Btf {
  private readonly byId = new Map<number, BtfType>();

  constructor(objectPath: string) {
    const out = execFileSync('bpftool', ['-j', 'btf', 'dump', 'file', objectPath], { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 });
    for (const t of (JSON.parse(out) as { types: BtfType[] }).types) this.byId.set(t.id, t);
  }

  private named(kind: string, name: string): BtfType {
    for (const t of this.byId.values()) if (t.kind === kind && t.name === name) return t;
    throw new Error(`no ${kind} ${name} in the BTF`);
  }

  private type(id: number): BtfType {
    const t = this.byId.get(id);
    if (!t) throw new Error(`BTF type ${id} missing`);
    return t;
  }

  /** sizeof(struct name). */
  structSize(name: string): number {
    return this.named('STRUCT', name).size ?? 0;
  }

  /**
   * Byte offset of every member of struct name, by member name. An anonymous union counts as
   * one member, named after its first member (client_addr4 for { client_addr4; client_addr6 }).
   */
  structOffsets(name: string): Record<string, number> {
    const offsets: Record<string, number> = {};
    for (const m of this.named('STRUCT', name).members ?? []) {
      const t = this.type(m.type_id);
      const memberName = m.name === '(anon)' && t.kind === 'UNION' ? (t.members?.[0]?.name ?? '(anon)') : m.name;
      offsets[memberName] = m.bits_offset / 8;
    }
    return offsets;
  }

  /** Number of elements of the array member `member` of struct name (e.g. a MAC's 6 bytes). */
  arrayLength(struct: string, member: string): number {
    const m = this.named('STRUCT', struct).members?.find((x) => x.name === member);
    if (!m) throw new Error(`struct ${struct} has no member ${member}`);
    return this.type(m.type_id).nr_elems ?? 0;
  }

  /** The enumerators of enum name, by enumerator name. */
  enumValues(name: string): Record<string, number> {
    return Object.fromEntries((this.named('ENUM', name).values ?? []).map((v) => [v.name, v.val]));
  }

  /** The names of the maps the object declares (its .maps section). */
  mapNames(): string[] {
    return (this.named('DATASEC', '.maps').vars ?? []).map((v) => this.type(v.type_id).name);
  }

  /**
   * An integer attribute of a map definition (libbpf's __uint(attr, n), which BTF encodes as
   * a pointer to an array of n ints).
   */
  mapAttribute(map: string, attribute: 'max_entries' | 'type' | 'map_flags'): number | undefined {
    const def = this.type(this.named('VAR', map).type_id ?? 0);
    const m = def.members?.find((x) => x.name === attribute);
    if (!m) return undefined;
    return this.type(this.type(m.type_id).type_id ?? 0).nr_elems;
  }

  /** Whether the object defines a function (a BPF program) of this name. */
  hasFunction(name: string): boolean {
    return [...this.byId.values()].some((t) => t.kind === 'FUNC' && t.name === name);
  }
}
