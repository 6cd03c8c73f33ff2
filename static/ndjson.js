// Incremental NDJSON decoding: text (or bytes) in, parsed objects out.
//
// Pure: no DOM, no fetch. Used by chat.js in the browser and by
// tests/js/ndjson.test.mjs under node. Lines end with "\n" only (as Ollama
// and chatsvc write them); a line may arrive split over several reads and one
// read may hold several lines, so the unfinished tail is kept until its "\n".

export class NDJSONParser {
  /**
   * @param {{onInvalid?: (line: string, error: Error) => void}} [options]
   *   onInvalid is told about a line that is not JSON; the line is skipped
   *   (what ollama-js does) so one bad line does not end the stream.
   */
  constructor(options = {}) {
    this.buffer = "";
    this.onInvalid = options.onInvalid || null;
  }

  /** Feed decoded text; returns the objects of every line it completed. */
  push(text) {
    this.buffer += text;
    const out = [];
    let start = 0;
    let end;
    while ((end = this.buffer.indexOf("\n", start)) !== -1) {
      this.parseLine(this.buffer.slice(start, end), out);
      start = end + 1;
    }
    this.buffer = this.buffer.slice(start);
    return out;
  }

  /** End of input: parse a last line that had no "\n" (if any). */
  flush() {
    const out = [];
    const rest = this.buffer;
    this.buffer = "";
    this.parseLine(rest, out);
    return out;
  }

  parseLine(line, out) {
    // JSON.parse accepts surrounding whitespace, so "\r\n" endings work too;
    // a blank line carries nothing (chatsvc never sends one, others might).
    if (line.trim() === "") return;
    try {
      out.push(JSON.parse(line));
    } catch (error) {
      if (this.onInvalid) this.onInvalid(line, error);
    }
  }
}

/**
 * Bytes in, objects out: a streaming TextDecoder in front of NDJSONParser, so
 * a multi-byte character split across two reads is decoded whole.
 */
export class NDJSONByteDecoder {
  constructor(options = {}) {
    this.decoder = new TextDecoder("utf-8");
    this.parser = new NDJSONParser(options);
  }

  push(bytes) {
    return this.parser.push(this.decoder.decode(bytes, { stream: true }));
  }

  flush() {
    const tail = this.decoder.decode(); // emits any incomplete sequence as U+FFFD
    return this.parser.push(tail).concat(this.parser.flush());
  }
}

/**
 * Read a ReadableStreamDefaultReader of bytes (fetch's response.body.getReader())
 * and yield each NDJSON object as soon as its line is complete. Rejections of
 * reader.read() (network failure, abort) propagate to the caller.
 */
export async function* readNDJSON(reader, options = {}) {
  const decoder = new NDJSONByteDecoder(options);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    for (const obj of decoder.push(value)) yield obj;
  }
  for (const obj of decoder.flush()) yield obj;
}
