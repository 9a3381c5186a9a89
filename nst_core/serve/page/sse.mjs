// Server-Sent Events read from a fetch() body, so that the page can send `Authorization: Bearer` (EventSource
// cannot send headers). Plain JavaScript, no DOM: the parsing follows the HTML standard's event-stream rules.

/** An incremental event-stream parser. feed(text) returns the events completed by that text, each
 * {type, data, id}: type "message" unless an `event:` field named it, data the `data:` lines joined by "\n",
 * id the last `id:` seen so far (carried over between events, as the standard's last event ID is).
 * `retry:` with digits only sets this.retry (ms). Lines end with "\r\n", "\n" or "\r"; comments start with ":". */
export class EventStreamParser {
  constructor() {
    this.rest = '';
    this.type = '';
    this.data = [];
    this.lastId = '';
    this.retry = null;
  }

  feed(text) {
    const events = [];
    let buffer = this.rest + text;
    // a "\r" at the very end may be the first half of "\r\n": keep it until the next chunk says
    let keep = '';
    if (buffer.endsWith('\r')) {
      keep = '\r';
      buffer = buffer.slice(0, -1);
    }
    const lines = buffer.split(/\r\n|\n|\r/);
    this.rest = lines.pop() + keep; // the unfinished line
    for (const line of lines) {
      const event = this.line(line);
      if (event) events.push(event);
    }
    return events;
  }

  line(line) {
    if (line === '') {
      if (this.data.length === 0) {
        this.type = '';
        return null;
      }
      const event = { type: this.type || 'message', data: this.data.join('\n'), id: this.lastId };
      this.type = '';
      this.data = [];
      return event;
    }
    if (line.startsWith(':')) return null;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.type = value;
    else if (field === 'data') this.data.push(value);
    else if (field === 'id' && !value.includes('\0')) this.lastId = value;
    else if (field === 'retry' && /^\d+$/.test(value)) this.retry = Number(value);
    return null;
  }
}
