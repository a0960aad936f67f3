// The slice of the service's HTTP API the demo uses (docs/SERVICE.md). Same origin, JSON in and out.

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
  }
}

export class Api {
  // apiKey: a function returning the key typed on the page ("" when the service runs without auth).
  constructor(apiKey) {
    this.apiKey = apiKey;
  }

  async request(method, path, body) {
    const headers = { "Content-Type": "application/json" };
    const key = this.apiKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (!response.ok) {
      // Errors are problem details ({title, detail, status}); fall back to the status line.
      const problem = await response.json().catch(() => ({}));
      throw new ApiError(response.status, problem.detail || response.statusText);
    }
    return response.status === 204 ? null : response.json();
  }

  models() {
    return this.request("GET", "/v1/models");
  }

  // options: more fields of the request, e.g. {x_transform, y_transform}.
  createSession(model, options = {}) {
    return this.request("POST", "/v1/sessions", { model, ...options });
  }

  session(id) {
    return this.request("GET", `/v1/sessions/${id}`);
  }

  deleteSession(id) {
    return this.request("DELETE", `/v1/sessions/${id}`);
  }

  // x, y: one row per point, [dim_x] and [dim_y] numbers.
  addContext(id, x, y) {
    return this.request("POST", `/v1/sessions/${id}/context`, { x, y });
  }

  // Events of an event session: times (non-decreasing, none before its last event) and marks.
  addEvents(id, times, marks) {
    return this.request("POST", `/v1/sessions/${id}/events`, { times, marks });
  }

  // The next event after the last one: waiting-time quantiles, mean and mark probabilities.
  forecast(id, quantiles) {
    return this.request("POST", `/v1/sessions/${id}/forecast`, { quantiles });
  }

  // x: one row per query. options: {numSamples, seed} asks for joint sample paths as well; omit
  // for mean and variance only.
  predict(id, x, options = {}) {
    const body = { x };
    if (options.numSamples) Object.assign(body, { num_samples: options.numSamples, seed: options.seed });
    return this.request("POST", `/v1/sessions/${id}/predict`, body);
  }
}
