/**
 * Server-sent events read with fetch (not EventSource): fetch can send the Authorization header a
 * publishable key travels in, and works the same in browsers and Node (the unit tests).
 */

export interface SseMessage {
  event: string;
  data: string;
  id?: string;
}

/** Read `response`'s event stream, calling `onMessage` per message, until it ends or `signal` aborts. */
export async function readEventStream(
  response: Response,
  onMessage: (message: SseMessage) => void,
  signal?: AbortSignal,
): Promise<void> {
  if (!response.body) throw new Error("the event stream has no body");
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let event = "message";
  let data: string[] = [];
  let id: string | undefined;
  try {
    while (!signal?.aborted) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let newline: number;
      while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
        if (line === "") {
          if (data.length) onMessage({ event, data: data.join("\n"), id });
          event = "message";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue; // a comment: the server's keep-alive
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value2 = colon < 0 ? "" : line.slice(colon + 1);
        if (value2.startsWith(" ")) value2 = value2.slice(1);
        if (field === "event") event = value2;
        else if (field === "data") data.push(value2);
        else if (field === "id") id = value2;
      }
    }
  } finally {
    reader.cancel().catch(() => undefined);
  }
}
