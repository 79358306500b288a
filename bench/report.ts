// Renders bench/results.json as BENCHMARKS.md and one hand-drawn SVG bar chart per metric
// (bench/charts/<id>.svg). Everything in the document comes from results.json, so a new
// `make bench` can never leave the prose and the numbers disagreeing; the notes on what bounds a
// number are written against the values they quote.
import fs from 'node:fs';
import path from 'node:path';
import { type BenchResults, type MetricResult, median } from './harness.js';

// ---- numbers --------------------------------------------------------------------------------

/** Three significant digits, thousands separated; integers above 1000 as they are. */
export function fmt(x: number | null | undefined): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return '–';
  const a = Math.abs(x);
  const digits = a >= 100 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3;
  return x.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

const ratioText = (r: number | null | undefined) => (r === null || r === undefined ? '–' : `${fmt(r)}×`);

// ---- SVG --------------------------------------------------------------------------------------

interface Bar {
  label: string;
  value: number;
  p99?: number | null;
  baton?: boolean;
}
interface Marker {
  label: string;
  value: number;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** A tick spacing of 1, 2, 2.5 or 5 times a power of ten, at least `raw`. */
export function niceStep(raw: number): number {
  const p = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 2.5, 5, 10].map((m) => m * p).find((v) => v >= raw) ?? 10 * p;
}

/** Horizontal bars (median), a whisker to the p99 where there is one, dashed goal markers. */
export function barChart(title: string, unit: string, bars: Bar[], markers: Marker[] = []): string {
  const W = 720;
  const labelW = 190;
  const plotW = 400;
  const rowH = 30;
  const top = 44;
  const legendH = markers.length ? 18 * markers.length + 8 : 0;
  const H = top + bars.length * rowH + 34 + legendH;
  const step = niceStep(Math.max(...bars.map((b) => Math.max(b.value, b.p99 ?? 0)), ...markers.map((m) => m.value), 1e-9) / 4);
  const maxV = step * Math.ceil((Math.max(...bars.map((b) => Math.max(b.value, b.p99 ?? 0)), ...markers.map((m) => m.value), 1e-9) * 1.02) / step);
  const x = (v: number) => labelW + (v / maxV) * plotW;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="#ffffff"/>`);
  out.push(`<text x="12" y="22" font-size="15" font-weight="bold">${esc(title)}</text>`);
  out.push(`<text x="12" y="38" fill="#555">median${bars.some((b) => b.p99 != null) ? ', whisker to p99' : ''} · ${esc(unit)}</text>`);
  bars.forEach((b, i) => {
    const y = top + i * rowH + 6;
    const fill = b.baton ? '#2b6cb0' : '#a0aec0';
    out.push(`<text x="${labelW - 8}" y="${y + 14}" text-anchor="end">${esc(b.label)}</text>`);
    out.push(`<rect x="${labelW}" y="${y}" width="${Math.max(1, x(b.value) - labelW).toFixed(1)}" height="20" fill="${fill}"/>`);
    let textX = x(b.value);
    if (b.p99 != null && Number.isFinite(b.p99)) {
      const px = x(b.p99);
      out.push(`<line x1="${x(b.value).toFixed(1)}" y1="${y + 10}" x2="${px.toFixed(1)}" y2="${y + 10}" stroke="#1a202c" stroke-width="1.5"/>`);
      out.push(`<line x1="${px.toFixed(1)}" y1="${y + 4}" x2="${px.toFixed(1)}" y2="${y + 16}" stroke="#1a202c" stroke-width="1.5"/>`);
      textX = Math.max(textX, px);
    }
    const text = b.p99 != null && Number.isFinite(b.p99) ? `${fmt(b.value)} (p99 ${fmt(b.p99)})` : fmt(b.value);
    out.push(`<text x="${(textX + 6).toFixed(1)}" y="${y + 14}" paint-order="stroke" stroke="#ffffff" stroke-width="4">${esc(text)}</text>`);
  });
  const axisY = top + bars.length * rowH + 8;
  out.push(`<line x1="${labelW}" y1="${top}" x2="${labelW}" y2="${axisY}" stroke="#333"/>`);
  out.push(`<line x1="${labelW}" y1="${axisY}" x2="${labelW + plotW}" y2="${axisY}" stroke="#333"/>`);
  for (let v = 0; v <= maxV * 1.0001; v += step) {
    out.push(`<text x="${x(v).toFixed(1)}" y="${axisY + 16}" text-anchor="middle" fill="#555">${esc(fmt(v))}</text>`);
  }
  markers.forEach((m, i) => {
    const mx = x(m.value).toFixed(1);
    out.push(`<line x1="${mx}" y1="${top - 2}" x2="${mx}" y2="${axisY}" stroke="#c53030" stroke-width="1.5" stroke-dasharray="5,3"/>`);
    const ly = axisY + 36 + i * 18;
    out.push(`<line x1="${labelW}" y1="${ly - 4}" x2="${labelW + 24}" y2="${ly - 4}" stroke="#c53030" stroke-width="1.5" stroke-dasharray="5,3"/>`);
    out.push(`<text x="${labelW + 30}" y="${ly}" fill="#c53030">${esc(`${m.label}: ${fmt(m.value)}`)}</text>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

/** The bars and goal markers of one metric. */
function chartOf(m: MetricResult): string {
  const bars: Bar[] = [{ label: 'Baton', value: m.median, p99: m.p99, baton: true }];
  for (const c of m.comparisons) bars.push({ label: c.against, value: c.median, p99: c.p99 });
  const markers: Marker[] = [];
  const base = (name: string) => m.comparisons.find((c) => c.against === name)?.median;
  switch (m.id) {
    case 'handoff-latency': {
      // The client's view, hop by hop, then handoff() and the reference.
      const hops = (m.details?.hops ?? {}) as Record<string, { median: number; p99: number }>;
      const short = (label: string) => label.replace(/ \(.*?\)/g, '').replace(/:.*$/, '').replace(/;.*$/, '');
      bars.splice(0, bars.length, ...Object.entries(hops).map(([label, s]) => ({ label: short(label), value: s.median, p99: s.p99 })), { label: 'handoff() total', value: m.median, p99: m.p99, baton: true });
      const ref = base('reference');
      if (ref !== undefined) {
        bars.push({ label: 'reference handoff (C)', value: ref, p99: m.comparisons[0]?.p99 });
        markers.push({ label: 'goal p50 (2× reference)', value: 2 * ref });
      }
      break;
    }
    case 'handoff-rate':
      markers.push({ label: 'goal', value: 5000 });
      break;
    case 'handoff-cpu':
      markers.push({ label: 'goal', value: 300 });
      break;
    case 'throughput-download':
    case 'throughput-upload': {
      const d = base('direct');
      const h = base('haproxy');
      if (d !== undefined) markers.push({ label: 'goal 0.95× direct', value: 0.95 * d });
      if (h !== undefined) markers.push({ label: 'goal 2× HAProxy', value: 2 * h });
      break;
    }
    case 'router-cpu-per-gb': {
      const h = base('haproxy');
      if (h !== undefined) markers.push({ label: 'goal 0.1× HAProxy', value: 0.1 * h });
      break;
    }
    case 'http-later-request': {
      const d = base('direct');
      if (d !== undefined) markers.push({ label: 'goal direct + 5 %', value: 1.05 * d });
      break;
    }
    case 'in-flight-stall':
      markers.push({ label: 'goal p99', value: 20 });
      break;
    case 'xdp-steering-rate': {
      const k = base('kernel forwarding');
      if (k !== undefined) markers.push({ label: 'goal 3× kernel forwarding', value: 3 * k });
      break;
    }
    case 'table-lookup':
      // Smallest table first: Baton's bar is the largest size.
      bars.push(bars.shift()!);
      break;
    case 'batond-rss':
      markers.push({ label: 'goal (200 MB)', value: 200 / 1.048576 });
      break;
    case 'takeover-first-connection': {
      // Three moments after the kill, in the order they happen: medians over the runs.
      const at = (k: string) => median((m.details?.[k] as number[] | undefined) ?? []);
      bars.splice(0, bars.length, { label: "n2's batond active", value: at('n2ActiveMs') }, { label: 'first handoff by n2', value: m.median, baton: true }, { label: 'client greeted by n3', value: at('clientGreetedMs') });
      break;
    }
  }
  if (m.id === 'table-lookup') for (const b of bars) if (b.baton) b.label = m.title.replace(/^.* at /, '');
  return barChart(m.title, m.unit, bars, markers);
}

// ---- markdown -------------------------------------------------------------------------------

function summaryRow(m: MetricResult): string {
  const value = m.p99 !== null ? `${fmt(m.median)} (p99 ${fmt(m.p99)}) ${m.unit}` : `${fmt(m.median)} ${m.unit}`;
  const comps = m.comparisons.length ? m.comparisons.map((c) => `${c.against}: ${fmt(c.median)}${c.p99 !== null ? ` (p99 ${fmt(c.p99)})` : ''}`).join('<br>') : '–';
  const ratios = m.comparisons.length ? m.comparisons.map((c) => `${ratioText(c.ratio)} ${c.against}`).join('<br>') : '–';
  return `| [${m.title}](#${m.id}) | ${value} | ${comps} | ${ratios} | ${m.goal.text} | ${m.goal.met ? 'met' : '**missed**'} |`;
}

function table(headers: string[], rows: string[][]): string {
  return [`| ${headers.join(' | ')} |`, `| ${headers.map(() => '---').join(' | ')} |`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

type Steps = Record<string, { median: number; p99: number }>;
type CpuSplit = Record<string, Record<string, { processesMsPerGb: number; packetWorkMsPerGb: number; bridgePortMsPerGb: number }>>;

const find = (all: MetricResult[], id: string) => all.find((x) => x.id === id);
const detail = <T>(all: MetricResult[], id: string, key: string): T | undefined => find(all, id)?.details?.[key] as T | undefined;

/** What the numbers say about each metric, and what bounds the ones that miss. */
function notes(m: MetricResult, all: MetricResult[]): string[] {
  const d = (m.details ?? {}) as Record<string, unknown>;
  const out: string[] = [];
  const cpu = detail<CpuSplit['baton']>(all, 'router-cpu-per-gb', 'baton');
  switch (m.id) {
    case 'handoff-latency': {
      const hops = (d.hops ?? {}) as Steps;
      const ref = m.comparisons.find((c) => c.against === 'reference');
      const cv = d.tracedClientViewUs as { median: number; p99: number } | undefined;
      const hopRows = Object.entries(hops);
      const byCost = [...hopRows].sort((a, b) => b[1].median - a[1].median);
      out.push(
        `**The critical path, hop by hop.** Every process stamps each handoff message it sends and receives with the machine's monotonic clock ([docs/protocol.md](docs/protocol.md#the-trace-of-a-handoff)); the client stamps its USER and the target's OK. All processes of the lab share that clock, so the rows below are the gaps between consecutive readings of the same handoff, and they add up to what the client sees (median ${fmt(cv?.median)} µs, p99 ${fmt(cv?.p99)} µs over the ${fmt(d.traced as number)} handoffs traced; the medians of the rows need not add up exactly).`,
      );
      out.push(table(['hop', 'median µs', 'p99 µs'], hopRows.map(([k, v]) => [k, fmt(v.median), fmt(v.p99)])));
      // A row with an arrow is a message between processes (with the work its receiver does before it stamps); the others are one process's work.
      const msgHops = hopRows.filter(([k]) => k.includes('→'));
      const work = hopRows.filter(([k]) => !k.includes('→'));
      const sum = (rows: Array<[string, { median: number }]>) => rows.reduce((a, [, v]) => a + v.median, 0);
      out.push(
        `Messages between processes (${msgHops.length} one-way hops: ${fmt(sum(msgHops))} µs of medians) cost more than the work between them (${fmt(sum(work))} µs); the costliest rows are ${byCost.slice(0, 3).map(([k, v]) => `"${k}" (${fmt(v.median)} µs)`).join(', ')}. ` +
          `The reference handoff in C (bench/reference/handoff.c: the same export, one round trip to an importer on n2 that reinstates the socket, the same routing-table write; no TLS, JSON, checks or logging) took a median ${fmt(ref?.median)} µs (p99 ${fmt(ref?.p99)} µs) in the same runs, and its client saw USER → OK in ${fmt((d.referenceClientViewUs as { median: number } | undefined)?.median)} µs: on this machine a message between two C processes costs a few µs, the kernel steps tens. Baton's handoff() is ${ratioText(ref?.ratio)} the reference at the median and ${ratioText(d.p99Ratio as number)} at p99.`,
      );
      const steps = d.steps as Steps;
      const total = steps['total handoff()']?.median ?? m.median;
      const parts = Object.entries(steps).filter(([k]) => !k.startsWith('total'));
      out.push('The same handoffs by step, as the routing node\'s batond times them (`done.timings`):');
      out.push(table(['step', 'median µs', 'p99 µs', 'share of the median total'], parts.map(([k, s]) => [k, fmt(s.median), fmt(s.p99), `${fmt((100 * s.median) / total)} %`]).concat([['**total handoff()**', `**${fmt(total)}**`, `**${fmt(steps['total handoff()']?.p99)}**`, ''], ['reference handoff (C), same span', fmt(ref?.median), fmt(ref?.p99), '']])));
      const ccv = d.clientViewUs as { median: number; p99: number } | undefined;
      if (ccv) out.push(`Seen from the client (USER sent → the target's OK received), all handoffs: median ${fmt(ccv.median)} µs, p99 ${fmt(ccv.p99)} µs. Failed handoffs: ${fmt(d.failed as number)} (reference: ${fmt(d.referenceFailed as number)}). Commits skipped (nothing changed since the snapshot): ${fmt(d.commitsSkipped as number)} of ${fmt(m.samples)}.`);
      break;
    }
    case 'handoff-latency-ipv6': {
      const cv = d.clientViewUs as { median: number; p99: number } | undefined;
      const cv4 = d.ipv4ClientViewUs as { median: number } | undefined;
      out.push(
        `Seen from the client (USER sent → the target's OK): median ${fmt(cv?.median)} µs over IPv6 (p99 ${fmt(cv?.p99)} µs), ${fmt(cv4?.median)} µs over IPv4 in the same runs. The processes, messages and kernel steps are the same for both families; an IPv6 connection's state carries 16-byte addresses instead of 4 (in the export, the offer and the routing-table key, which is 40 bytes for both). Failed handoffs: ${fmt(d.failed as number)}.`,
      );
      break;
    }
    case 'throughput-download-ipv6':
    case 'throughput-upload-ipv6':
      out.push(
        `An IPv6 header is 20 bytes longer than IPv4's, so at the lab's MTU of 1500 a full segment carries 1,428 bytes of data instead of 1,448 (both with TCP timestamps): 1.4 % fewer data bytes per frame, and the same per-frame costs (the machine was ${fmt(d.machineBusyPct as number)} % busy). The steering program reads the same flow key for both families.`,
      );
      break;
    case 'handoff-rate': {
      const cv = d.clientViewUnderLoadUs as { median: number; p99: number } | undefined;
      const ref = m.comparisons.find((c) => c.against === 'reference');
      const rcv = d.referenceClientViewUnderLoadUs as { median: number } | undefined;
      out.push(
        `Failures: ${fmt(d.failed as number)}${Object.keys((d.errors as object) ?? {}).length ? ` (${Object.entries(d.errors as Record<string, number>).map(([k, v]) => `${v}× ${k}`).join('; ')})` : ''}; reference: ${fmt(d.referenceFailed as number)}. With ${fmt(d.concurrency as number)} logins in flight, each handoff took a median ${fmt((cv?.median ?? NaN) / 1000)} ms from the client's USER to the target's OK (p99 ${fmt((cv?.p99 ?? NaN) / 1000)} ms), through the reference ${fmt((rcv?.median ?? NaN) / 1000)} ms: queueing behind the work of the others in flight. The machine was ${fmt(d.machineBusyPct as number)} % busy during Baton's runs and ${fmt(d.referenceMachineBusyPct as number)} % during the reference's: both are bound by the two cores, so the rate is the inverse of the CPU a handoff costs (next section). The reference reached ${fmt(ref?.median)} handoffs/s with the same Node.js client, whose own work (connect, log in, close) is then a large part of the machine's.`,
      );
      break;
    }
    case 'handoff-cpu': {
      const split = (k: string) => (d[k] ?? {}) as Record<string, number>;
      const b = split('baton');
      const r = split('reference');
      const rows = [...new Set([...Object.keys(b), ...Object.keys(r)])].filter((k) => k !== 'total');
      out.push(table(['where', 'Baton µs per handoff', 'reference µs per handoff'], rows.map((k) => [k, fmt(b[k]), fmt(r[k])]).concat([['**total (machine busy time)**', `**${fmt(b.total)}**`, `**${fmt(r.total)}**`]])));
      out.push(
        `The client is the same Node.js program for both, so its share ("the rest") is about the same; the difference is Baton's processes: the routing application, the routing node's batond, the target node's batond and the target application each wake up for the messages of every handoff, and on this machine a Node.js process woken for one message costs tens to hundreds of µs of CPU (the event loop's turn, the stream layers, the message's handler) where a C process costs a few. 5,000 handoffs a second on ${fmt(find(all, 'handoff-rate')?.details?.cpus as number)} cores leave ${fmt((((find(all, 'handoff-rate')?.details?.cpus as number) ?? 2) / 5000) * 1e6)} µs per handoff for everything, the client included.`,
      );
      break;
    }
    case 'throughput-download':
    case 'throughput-upload': {
      const upload = m.id === 'throughput-upload';
      const busy = d.machineBusyPct as Record<string, number> | undefined;
      const dir = upload ? cpu?.upload : cpu?.download;
      out.push(
        `The machine was ${fmt(busy?.direct)} % busy during the direct transfers (${fmt(busy?.baton)} % through Baton, ${fmt(busy?.haproxy)} % through HAProxy): the client and the server in Node.js and every namespace's packet work compete for the same two cores, so CPU that a path adds is taken from the ends.`,
      );
      out.push(
        upload
          ? `Upload is Baton's hard case in this lab: every data segment goes client → bridge → n1 (XDP_TX) → bridge → n2. The CPU pass below measured n1's packet work at ${fmt(dir?.packetWorkMsPerGb)} ms per GB and the bridge port's pass program and forwarding at ${fmt(dir?.bridgePortMsPerGb)} ms per GB, CPU time the direct path never spends. Both are per-frame costs of XDP on veth: native XDP on n1's veth turns off TCP segmentation offload on its peer (and so does the lab's checksum setting), so n1 receives MTU-sized frames one at a time ([docs/datapath.md](docs/datapath.md#native-xdp-on-a-veth-takes-tso-from-its-peer)), and the veth driver's receive path around the steering program costs far more than the program (see the steering rate below). On a NIC the bridge work does not exist and the veth artefacts neither; what the upload ratio to direct would be there, this lab cannot say. HAProxy pays the same per-frame costs on n1's side plus two TCP stacks and a copy through user space.`
          : `Download is the easy direction: the target sends straight to the client and only the client's ACKs cross n1. Their cost — n1's packet work ${fmt(dir?.packetWorkMsPerGb)} ms per GB plus the bridge port's ${fmt(dir?.bridgePortMsPerGb)} ms per GB in the CPU pass below — is the only extra work on Baton's download path, and it runs on the same two cores as sender and receiver.`,
      );
      out.push('All three paths use the same client and the same GET/PUT server code on n2 (SHA-256 of every upload); no size was reduced: each run moves 1 GB per path and direction.');
      break;
    }
    case 'router-cpu-per-gb': {
      const s = d as CpuSplit;
      out.push(
        table(
          ['path', 'direction', 'n1 processes ms/GB', 'n1 packet work ms/GB', '(bridge port of n1, not counted) ms/GB'],
          ['baton', 'haproxy'].flatMap((p) => ['download', 'upload'].map((dir) => [p, dir, fmt(s[p]?.[dir]?.processesMsPerGb), fmt(s[p]?.[dir]?.packetWorkMsPerGb), fmt(s[p]?.[dir]?.bridgePortMsPerGb)])),
        ),
      );
      const steer = detail<Record<string, number[]>>(all, 'xdp-steering-rate', 'n1NsPerPacket');
      out.push(
        `Baton's n1 does no work in user space for a moved connection; all of its cost is packet work, and almost all of that is the upload's data frames (a download only sends ACKs through n1). Per frame that is the veth receive path measured by the steering benchmark (median ${fmt(median(steer?.xdp ?? []))} ns per frame there, of which the steering program itself is about ${fmt(find(all, 'table-lookup')?.median)} ns): the veth driver's work around the program (receiving the frame, sending it back out with XDP_TX), not the table lookup, is what keeps the ratio above 0.1 in this lab.`,
      );
      break;
    }
    case 'http-first-request': {
      const lat = find(all, 'handoff-latency');
      const base = m.comparisons[0]?.median;
      const handoffMs = ((lat?.details?.clientViewUs as { median: number } | undefined)?.median ?? NaN) / 1000;
      const refMs = ((lat?.details?.referenceClientViewUs as { median: number } | undefined)?.median ?? NaN) / 1000;
      out.push(
        `Both paths make the same exchanges: a request, the 401 Digest challenge, the request with credentials, and a node:http handler on n2 answering it. Baton's routing application checks the credentials itself and then hands the connection off before n2 can answer; HAProxy relays both requests over its own connections to plain servers that check the credentials. The gap between the medians, ${fmt(m.median - (base ?? NaN))} ms, is of the order of one handoff as a client sees it: ${fmt(handoffMs)} ms from the line client's USER to the target's answer in the latency benchmark, whose critical path is laid out hop by hop there (seven one-way messages between four Node.js processes). Without the handoff the exchanges take about ${fmt(m.median - handoffMs)} ms; with a handoff as cheap as the reference's as a client sees it (${fmt(refMs)} ms), the first request would take about ${fmt(m.median - handoffMs + refMs)} ms against HAProxy's ${fmt(base)} ms: ` +
          (m.median - handoffMs + refMs < (base ?? NaN)
            ? 'the handoff\'s messages, not the exchanges, bound this goal.'
            : `even that would not bring it below HAProxy in this lab. The routing application (Node.js) spends ${fmt(m.median - handoffMs)} ms on its two exchanges (the challenge and the authenticated request) where HAProxy (in C, relaying to Node.js servers like the targets) spends ${fmt(base)} ms on the whole first request, leaving ${fmt((base ?? NaN) - (m.median - handoffMs))} ms for a handoff: what bounds this goal here is the routing application's own exchanges first, then the handoff's messages.`),
      );
      break;
    }
    case 'http-later-request': {
      const direct = m.comparisons.find((c) => c.against === 'direct')?.median;
      out.push(
        `Baton adds ${fmt(((m.median - (direct ?? NaN)) * 1000))} µs per request to the direct median: the request's trip through n1's XDP program and the bridge once more (answers go straight back). HAProxy adds a relay through user space and a second TCP connection.`,
      );
      out.push(
        'The example target and the baseline server answer the same way: at once, with no timer (a zero-length timer in Node.js waits for the next timer tick, about 1 ms, which all three paths used to pay per request).',
      );
      break;
    }
    case 'in-flight-stall': {
      const rt = d.clientRetransmittedSegments as Record<string, number> | undefined;
      const during = d.putsSentDuringHandoff as { median: number; max: number } | undefined;
      const wait = d.longestWaitOfAPutMs as Record<string, { median: number; p99: number }> | undefined;
      const maxStall = (d.stallMs as { max: number } | undefined)?.max ?? NaN;
      out.push(
        `The client sent a median ${fmt(during?.median)} PUTs (up to ${fmt(during?.max)}) while its connection was moving. The freeze dropped ${fmt(d.packetsDroppedByFreeze as number)} of its packets over all runs and the client retransmitted ${fmt(rt?.baton)} segments (${fmt(rt?.direct)} on the direct connections). The longest stall of all ${fmt(m.samples)} connections was ${fmt(maxStall)} ms: ${maxStall < 200 ? 'no dropped segment waited for a retransmission timeout (200 ms or more); the client\'s retransmissions came early, and the target\'s window probe on going live acknowledges what the delta carried.' : 'at least one dropped segment waited for a retransmission timeout.'}`,
      );
      out.push(
        `Counted from the USER line instead, a PUT's longest wait includes the handoff itself: median ${fmt(wait?.baton?.median)} ms, p99 ${fmt(wait?.baton?.p99)} ms (the handoff as the client sees it: median ${fmt((d.handoffClientViewMs as { median: number })?.median)} ms); the same PUTs on a direct connection wait at most ${fmt(wait?.direct?.median)} ms (median; p99 ${fmt(wait?.direct?.p99)} ms).`,
      );
      break;
    }
    case 'xdp-steering-rate': {
      const ns = d.n1NsPerPacket as Record<string, number[]>;
      const offered = d.offeredPps as Record<string, number[]>;
      const delivered = d.deliveredToN2Pps as Record<string, number[]>;
      const handled = d.handledByN1Pps as Record<string, number[]>;
      const prog = find(all, 'table-lookup')?.median;
      out.push(
        `n1's CPU per frame: steering ${ns?.xdp?.map(fmt).join(', ')} ns, kernel forwarding ${ns?.kernel?.map(fmt).join(', ')} ns (per run). The steering program itself takes about ${fmt(prog)} ns of that (BPF_PROG_TEST_RUN, table-lookup below); the rest is the veth driver's work around the program, and both variants pay its receive side, because the program is attached in both (in the kernel variant it finds no entry and passes the frame on). What differs is only what follows the verdict: XDP_TX hands the frame back to the bridge-side veth, XDP_PASS sends it through n1's IP stack and out the same veth. On veth these two cost about the same (${m.ratio !== null && m.ratio >= 1 ? `steering is ${fmt(m.ratio)}× as fast here` : `steering is ${fmt(m.ratio)}× as fast here, i.e. slower`}), so the veth work both share decides the rate, and the ratio stays far from 3×. A NIC driver runs XDP on its receive buffer before building anything; what the ratio is there, this lab cannot measure.`,
      );
      out.push(
        `End to end (sender, bridge, n1 and n2 on the same two cores), frames per second per run: offered ${offered?.xdp?.map(fmt).join(', ')}, handled by n1 ${handled?.xdp?.map(fmt).join(', ')}, delivered to n2 ${delivered?.xdp?.map(fmt).join(', ')} with steering; offered ${offered?.kernel?.map(fmt).join(', ')}, handled ${handled?.kernel?.map(fmt).join(', ')}, delivered ${delivered?.kernel?.map(fmt).join(', ')} with kernel forwarding. These are bounded by the sender and the bridge sharing the cores with n1, hence n1's per-core figure as the metric.`,
      );
      break;
    }
    case 'table-lookup': {
      const by = d.bySize as Record<string, { steerNsPerPacket: { median: number; p99: number }; spreadNsPerPacket?: number; missNsPerPacket: number; userSpaceLookupNs: number; fillSeconds: number }>;
      out.push(
        table(
          ['entries', 'steering program ns/packet (median over keys)', 'one packet per flow in turn, ns', 'packet with no entry, ns', 'user-space lookup ns (random keys)', 'fill time s'],
          Object.entries(by).map(([k, v]) => [k, fmt(v.steerNsPerPacket.median), fmt(v.spreadNsPerPacket), fmt(v.missNsPerPacket), fmt(v.userSpaceLookupNs), fmt(v.fillSeconds)]),
        ),
      );
      out.push('The user-space column is what batond pays per lookup (one bpf() syscall through koffi) with random keys, so it includes cache misses at every size; the program column repeats each key in the kernel and runs warm; the per-flow-in-turn column is the other end, one run per flow in a random order (the timing of the test run itself included). The program and user-space columns stay flat from 1k to 1M entries: a hash-table lookup does not slow down with size. The per-flow column grows as the table outgrows the CPU caches: at 1k entries its 10,000 runs revisit each entry about ten times and find it cached, at 100k and 1M most entries were last touched long before.');
      break;
    }
    case 'takeover-stall': {
      const first = find(all, 'takeover-first-connection')?.details as Record<string, number[]> | undefined;
      const maxes = d.maxPerRunMs as number[];
      const p99s = d.p99PerRunMs as number[];
      const before = m.comparisons[0];
      out.push(
        table(
          ['run', "n2's batond active after the kill, ms", 'stall median ms', 'stall p99 ms', 'stall max ms', 'connections over 400 ms', 'before the kill, median ms'],
          m.runs.map((x, i) => [String(i + 1), fmt(first?.n2ActiveMs?.[i]), fmt(x), fmt(p99s?.[i]), fmt(maxes?.[i]), `${fmt((d.over400MsPerRun as number[] | undefined)?.[i])} of ${fmt(d.connectionsPerRun as number)}`, fmt(before?.runs[i])]),
        ),
      );
      const failed = d.failedConnections as number;
      const total = (d.connectionsPerRun as number) * m.runs.length;
      const active = median(first?.n2ActiveMs ?? []);
      out.push(
        `${failed === 0 ? `All ${fmt(total)} connections carried on through n2, byte-exact, none reset, and every one did rounds after the takeover` : `**${fmt(failed)} of ${fmt(total)} connections failed** (${(d.errors as string[]).join('; ')})`}. ` +
          `A round normally takes a median ${fmt(before?.median)} ms (the same connections just before the kill); across the takeover the longest round of a connection took a median ${fmt(m.median)} ms. ` +
          `Nothing steers the connections from the kill until keepalived on n2 has missed three adverts and takes the DVIPA with gratuitous ARP (with 100 ms adverts, about 0.3 s; n2's batond, told by keepalived through the FIFO, knew it was active a median ${fmt(active)} ms after the kill). Segments sent meanwhile are lost and wait for their sender's retransmission timer (at least 200 ms, doubling at every loss): a connection whose first retransmission reached n2 stalled about that long, one whose first retransmission still went to the dead n1 waited for the second, some 400 ms later (counted in the table's over-400-ms column). n2's steering needs no step of its own: the replica is in its map before the move.`,
      );
      break;
    }
    case 'takeover-first-connection': {
      const at = (k: string) => (d[k] as number[] | undefined) ?? [];
      out.push(
        table(
          ['run', "n2's batond active, ms", 'first handoff by n2, ms', 'client greeted by n3, ms', 'connections tried until then'],
          m.runs.map((x, i) => [String(i + 1), fmt(at('n2ActiveMs')[i]), fmt(x), fmt(at('clientGreetedMs')[i]), fmt(at('attemptsUntilServed')[i])]),
        ),
      );
      out.push(
        `Every time is counted from the kill. n2's routing application listens all along (a backup runs it too); it can hand a connection off once the client's SYN reaches n2, which takes the gratuitous ARP that comes with keepalived's MASTER, and once n2's batond has taken the table over. The client counts its first greeting, including the connection and login that were under way; attempts started before the move (their SYN went to the dead n1) only retransmit after 1 s, so the first one served is one started after it.`,
      );
      break;
    }
    case 'replication-throughput': {
      const arr = (k: string) => (d[k] as number[] | undefined) ?? [];
      out.push(
        table(
          ['run', 'entries', 'snapshot ms', 'entries/s', "n1's batond CPU µs per entry", "n2's batond CPU µs per entry", "stream attached after n2's batond started, ms", "replica equal after n2's batond started, ms"],
          m.runs.map((x, i) => [String(i + 1), fmt(d.entries as number), fmt(arr('snapshotMs')[i]), fmt(x), fmt(arr('n1CpuUsPerEntry')[i]), fmt(arr('n2CpuUsPerEntry')[i]), fmt(arr('attachAfterN2StartMs')[i]), fmt(arr('equalAfterN2StartMs')[i])]),
        ),
      );
      const cpu = d.n1CpuUsPerEntryMedian as number;
      const cpu2 = median(arr('n2CpuUsPerEntry'));
      const secs = (d.entries as number) / m.median;
      // Share of one core each batond used while the snapshot ran: µs per entry × entries per s.
      const busy1 = (cpu * m.median) / 1e4;
      const busy2 = (cpu2 * m.median) / 1e4;
      out.push(
        `The active distributor spent a median ${fmt(cpu)} µs of CPU per entry sent (${fmt((cpu * (d.entries as number)) / 1000)} ms for the ${fmt(d.entries as number)}-entry table): reading each entry from the map (two bpf() calls), encoding it and writing it to the TLS link, a page per turn of its event loop, so handoffs go on between pages. A backup that restarts or reconnects is complete again ${fmt(secs)} s after the stream attaches; until then it would take over with part of the table. ` +
          `During the snapshot n1's batond used ${fmt(busy1)} % of a core and n2's ${fmt(busy2)} % (${fmt(cpu2)} µs per entry: decoding, writing each entry into its map, acknowledging, then the sweep)${busy2 >= 80 ? ': the backup applying the stream, one core\'s worth, is what bounds the rate, not the active distributor' : ''}. ` +
          `The stream attaches at n1's next heartbeat after n2's batond is up (${fmt(median(arr('attachAfterN2StartMs')))} ms after its start, median), so from n2's start to an equal replica took ${fmt(median(arr('equalAfterN2StartMs')))} ms.` +
          ((d.reconcilerMayHaveRun as boolean) ? ' In at least one run n1\'s reconciler (a walk of the whole table every 30 s) may have run during the snapshot and added to its CPU.' : ''),
      );
      break;
    }
    case 'batond-rss': {
      const runs = (d.runs ?? []) as Array<Record<string, number>>;
      out.push(
        table(
          ['run', 'before MiB', 'entries written MiB', 'indexed by batond MiB', 'seconds until indexed', 'entries /metrics reported', 'scrape CPU ms', 'removed and unindexed MiB'],
          runs.map((r, i) => [String(i + 1), fmt(r.before), fmt(r.filled), fmt(r.indexed), fmt(r.indexSeconds), fmt(r.tableEntriesReported), fmt(r.scrapeCpuMs), fmt(r.afterRemoval)]),
        ),
      );
      out.push(
        `${fmt(d.idleSeconds as number)} s after the last run, with no scrape meanwhile: ${fmt(d.afterIdleMiB as number)} MiB. The table itself lives in kernel memory; writing 100k entries into it from outside leaves batond's RSS where it was until its reconciler (a walk of the map every 30 s, a few keys per turn of the event loop) indexes them: the "indexed" column is what batond pays to know 100k flows without walking the map for each question. After the entries go, V8 keeps the heap it grew and reuses it: the next run starts from there and grows less. A /metrics scrape reads the count from that index, so its CPU no longer grows with the table.`,
      );
      break;
    }
  }
  return out;
}

export function renderReport(results: BenchResults, root: string): void {
  const chartsDir = path.join(root, 'bench', 'charts');
  fs.mkdirSync(chartsDir, { recursive: true });
  for (const m of results.metrics) fs.writeFileSync(path.join(chartsDir, `${m.id}.svg`), chartOf(m));
  const mc = results.machine;
  const lines: string[] = [];
  lines.push('# Benchmarks');
  lines.push('');
  lines.push(
    `Generated by \`make bench\` (\`bench/\`) on ${results.generatedAt.slice(0, 10)}: ${mc.cpus} cores (${mc.cpuModel}), ${fmt(mc.memoryMiB / 1024)} GiB, kernel ${mc.kernel}, Node ${mc.node}, HAProxy ${mc.haproxy}. The whole suite took ${fmt(results.durationS)} s. Machine-readable: [bench/results.json](bench/results.json). Do not edit this file by hand: \`make bench\` rewrites it.`,
  );
  lines.push('');
  lines.push(
    'Everything runs in one namespace lab (`btbench`: a client, n1 distributing, n2 and n3, one bridge; [docs/lab.md](docs/lab.md)) but the takeover group, which builds a lab of its own with n2 as backup distributor for each run (n1 dies in each), all on one machine, so the client, every node and every baseline share the same two cores: absolute numbers are this machine\'s, comparisons are made under the same conditions. Each measurement is repeated; comparisons run interleaved (Baton, baseline, Baton, baseline…) so that drift lands on both. Medians are the middle sample (mean of the two middle ones for an even count); p99 is the nearest-rank 99th percentile (an observed sample). Baselines: a plain server on n2 reached directly ("direct"), and HAProxy from the Debian package on n1 (`mode tcp` for bulk transfers, `mode http` routing by header for HTTP), started by the suite with the config it writes (`build/bench-lab/run/haproxy.cfg`); and for the handoff the reference handoff ("reference", `bench/reference/handoff.c`): Baton\'s own kernel steps driven by two small C processes on n1 and n2, the floor of this lab on this machine.',
  );
  const bg = mc.backgroundAtStart;
  if (bg) {
    lines.push('');
    lines.push(
      `Before the suite started the machine was ${fmt(bg.busyPct)} % busy (load average ${fmt(bg.loadAverage1m)}) with ${fmt(bg.otherNetworkNamespaces)} network namespaces of other work present${bg.busyPct >= 5 || bg.otherNetworkNamespaces > 0 ? ': other work shared the cores during this run, and the absolute numbers carry its noise (interleaving still spreads it over both sides of each comparison)' : ''}.${mc.stealPctDuringRun !== undefined ? ` The hypervisor took ${fmt(mc.stealPctDuringRun)} % of the CPU time while the suite ran (steal).` : ''}`,
    );
  }
  lines.push('');
  lines.push(
    'Sizes are the issue\'s: 500 handoffs for the latency, 5,000 connections per rate run, 1 GB per transfer. Two measurement aids change the lab while they run and are undone after: the steering-rate and CPU benchmarks put n1\'s receive processing in a kernel thread of its own (threaded NAPI on n1\'s eth0 and its bridge port), so that n1\'s packet work can be timed apart from everything else sharing the cores; and the steering benchmark turns on IP forwarding on n1 for its kernel-forwarding baseline.',
  );
  lines.push('');
  lines.push('## Summary');
  lines.push('');
  lines.push('| metric | Baton: median (p99) | baselines: median (p99) | ratio (Baton / baseline) | goal | |');
  lines.push('| --- | --- | --- | --- | --- | --- |');
  for (const m of results.metrics) lines.push(summaryRow(m));
  lines.push('');
  for (const f of results.failures ?? []) lines.push(`\n**Not measured in this run: ${f.group}** — ${f.error}`);
  const missed = results.metrics.filter((m) => !m.goal.met);
  lines.push(
    missed.length
      ? `${results.metrics.length - missed.length} of ${results.metrics.length} goals met. Each metric's section says what bounds it; the changes made so far to go faster, each with its before and after, are listed at the end.`
      : `All ${results.metrics.length} goals met.`,
  );
  for (const m of results.metrics) {
    lines.push('');
    lines.push(`## ${m.title}`);
    lines.push('<a id="' + m.id + '"></a>');
    lines.push('');
    lines.push(`![${m.title}](bench/charts/${m.id}.svg)`);
    lines.push('');
    const value = m.p99 !== null ? `median **${fmt(m.median)} ${m.unit}**, p99 ${fmt(m.p99)} ${m.unit}` : `median **${fmt(m.median)} ${m.unit}**`;
    lines.push(`${value} over ${fmt(m.samples)} ${m.p99 !== null ? 'samples' : 'runs'} (per run: ${m.runs.map(fmt).join(', ')}). Goal: ${m.goal.text} — **${m.goal.met ? 'met' : 'missed'}**.`);
    for (const c of m.comparisons) {
      lines.push(`- ${c.against}: median ${fmt(c.median)} ${m.unit}${c.p99 !== null ? `, p99 ${fmt(c.p99)}` : ''} (per run: ${c.runs.map(fmt).join(', ')}); Baton / ${c.against} = ${ratioText(c.ratio)}`);
    }
    lines.push('');
    lines.push(`How: ${m.method}.`);
    for (const n of notes(m, results.metrics)) {
      lines.push('');
      lines.push(n);
    }
  }
  // Changes made to go faster, each with the numbers before and after (written by hand when a
  // change lands: a single run cannot know what the code measured before it).
  const changes = path.join(root, 'bench', 'changes.md');
  if (fs.existsSync(changes)) {
    lines.push('');
    lines.push(fs.readFileSync(changes, 'utf8').trimEnd());
  }
  lines.push('');
  fs.writeFileSync(path.join(root, 'BENCHMARKS.md'), `${lines.join('\n')}`);
}
