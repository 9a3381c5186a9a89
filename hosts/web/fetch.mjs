// Shared by the page (app.mjs) and its worker (worker.mjs): the one-line error they show, and fetch with it.

/** An error whose message is shown on the page as it is: one line naming the problem. */
export class PageError extends Error {}

/** fetch(url), the response when it is OK; otherwise a PageError naming `what` and why. */
export async function fetchOk(url, what) {
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new PageError(`${what} (${url}): cannot fetch it (${e.message})`);
  }
  if (!response.ok) throw new PageError(`${what} (${url}): HTTP ${response.status} ${response.statusText}`);
  return response;
}
