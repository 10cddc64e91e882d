// REST access with the optional bearer token, and the WebSocket URL.
//
// The token lives in sessionStorage: it survives a reload of the tab but not
// the end of the browser session, and is never written into the page's URL.

const TOKEN_KEY = "control-center.token";
// Fallback when sessionStorage is unavailable.
let memoryToken = "";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return ""; // storage disabled (e.g. privacy mode): work without it
  }
}

export function setToken(token) {
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // ignore: the token then lasts only as long as this page
  }
  memoryToken = token;
}

export function clearToken() {
  try {
    sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // ignore
  }
  memoryToken = "";
}

function currentToken() {
  return getToken() || memoryToken;
}

/** Called with the ApiError whenever the server answers 401. */
let unauthorizedHandler = null;
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

/**
 * Fetch JSON from the API. Errors (network, 4xx/5xx) become ApiError whose
 * message is the server's JSON `error` when there is one.
 */
export async function api(path, {method = "GET", signal, json} = {}) {
  const headers = {Accept: "application/json"};
  const token = currentToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  // `json`: a request body, sent as JSON.
  if (json !== undefined) headers["Content-Type"] = "application/json";
  const payload = json === undefined ? undefined : JSON.stringify(json);
  let response;
  try {
    response = await fetch(path, {method, headers, signal, cache: "no-store", body: payload});
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiError(0, "Server unreachable");
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = (body && typeof body.error === "string" && body.error) ||
      `${response.status} ${response.statusText || "error"}`;
    const error = new ApiError(response.status, message);
    if (response.status === 401 && unauthorizedHandler) unauthorizedHandler(error);
    throw error;
  }
  return body;
}

export function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const token = currentToken();
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  return `${scheme}//${location.host}/ws${query}`;
}
