// Errors that are the user's input, reported as one line and exit status 2 (like nst's NSTError).
export class HostError extends Error {
  constructor(message) {
    super(message);
    this.name = 'HostError';
  }
}
