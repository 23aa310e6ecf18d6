// Starts Swagger UI on the server's own schema. The token is the page's (the same local storage key): the schema
// is read with it, and every request "Try it out" sends carries it.
"use strict";
(async () => {
  const status = document.getElementById("status");
  let token = localStorage.getItem("imagedb-token") || "";
  const withToken = (headers = {}) => (token ? { ...headers, Authorization: `Bearer ${token}` } : headers);
  // An API route says whether the server asks for a token (the schema alone need not).
  const probe = await fetch("/api/collections", { headers: withToken() });
  if (probe.status === 401) {
    token = prompt("This imagedb server needs its token:") || "";
    localStorage.setItem("imagedb-token", token);
  }
  const response = await fetch("/openapi.json", { headers: withToken() });
  if (!response.ok) {
    status.textContent = `The API's schema could not be read: ${response.status} ${response.statusText}`;
    return;
  }
  SwaggerUIBundle({
    spec: await response.json(),
    dom_id: "#swagger-ui",
    requestInterceptor: (request) => {
      request.headers = withToken(request.headers);
      return request;
    },
  });
})();
