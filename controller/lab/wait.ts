// Waiting for something that happens on its own time (a datagram, a socket's bytes, a log line, a
// timer in the code under test): a bounded poll, so a test or a benchmark neither guesses a sleep
// that a slow machine outruns nor hangs when the thing never happens.

/**
 * Resolves once `cond()` holds, checking every `everyMs`; throws after `timeoutMs`. `what` names
 * the awaited thing in the error; as a function it is read then, to show the state that was wrong.
 */
export async function until(what: string | (() => string), cond: () => boolean, timeoutMs = 5_000, everyMs = 5): Promise<void> {
  for (const deadline = Date.now() + timeoutMs; !cond(); ) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === 'string' ? what : what()}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
