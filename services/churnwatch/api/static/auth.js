// The bearer token of the page's API calls. The API asks for one on every /api/ route unless
// it runs with CHURNWATCH_API_AUTH=off; when it answers 401 the page asks the user for a token,
// keeps it for this browser tab only (sessionStorage) and sends it with every call after.

import { h } from "./dom.js";

const KEY = "churnwatch-token";
let onToken = null;

export function authHeaders() {
  const token = window.sessionStorage.getItem(KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** Shows the token form (once), with `message`; `then()` runs after a token is entered. */
export function askForToken(message, then) {
  onToken = then;
  let form = document.getElementById("token-form");
  if (!form) {
    const input = h("input", {
      id: "token",
      name: "token",
      type: "password",
      autocomplete: "off",
      "data-testid": "token",
    });
    form = h(
      "form",
      { id: "token-form", class: "token-form", "data-testid": "token-form" },
      h("p", { id: "token-message", class: "definition", "data-testid": "token-message" }),
      h("label", { for: "token" }, "API token ", input),
      " ",
      h("button", { type: "submit" }, "Use this token"),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      window.sessionStorage.setItem(KEY, token);
      input.value = "";
      form.hidden = true;
      if (onToken) onToken();
    });
    document.querySelector("main").prepend(form);
  }
  document.getElementById("token-message").textContent = message;
  form.hidden = false;
}

/** Forgets a token the API refused. */
export function forgetToken() {
  window.sessionStorage.removeItem(KEY);
}
