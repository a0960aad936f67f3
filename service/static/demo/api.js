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

  createSession(model) {
    return this.request("POST", "/v1/sessions", { model });
  }

  session(id) {
    return this.request("GET", `/v1/sessions/${id}`);
  }

  deleteSession(id) {
    return this.request("DELETE", `/v1/sessions/${id}`);
  }

  // xs, ys: arrays of numbers (one feature, one output).
  addContext(id, xs, ys) {
    return this.request("POST", `/v1/sessions/${id}/context`, { x: xs.map((v) => [v]), y: ys.map((v) => [v]) });
  }

  // Events of an event session: times (non-decreasing, none before its last event) and marks.
  addEvents(id, times, marks) {
    return this.request("POST", `/v1/sessions/${id}/events`, { times, marks });
  }

  // The next event after the last one: waiting-time quantiles, mean and mark probabilities.
  forecast(id, quantiles) {
    return this.request("POST", `/v1/sessions/${id}/forecast`, { quantiles });
  }

  // options: {numSamples, seed} asks for joint sample paths as well; omit for mean and variance only.
  predict(id, xs, options = {}) {
    const body = { x: xs.map((v) => [v]) };
    if (options.numSamples) Object.assign(body, { num_samples: options.numSamples, seed: options.seed });
    return this.request("POST", `/v1/sessions/${id}/predict`, body);
  }
}
