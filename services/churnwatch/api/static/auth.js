// The bearer token of the page's API calls. The API asks for one on every /api/ route unless
// it runs with CHURNWATCH_API_AUTH=off; when it answers 401 the page asks the user for a token,
// keeps it for this browser tab only (sessionStorage) and sends it with every call after.

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
    form = document.createElement("form");
    form.id = "token-form";
    form.className = "token-form";
    form.setAttribute("data-testid", "token-form");
    const label = document.createElement("label");
    label.htmlFor = "token";
    label.textContent = "API token ";
    const input = document.createElement("input");
    input.id = "token";
    input.name = "token";
    input.type = "password";
    input.autocomplete = "off";
    input.setAttribute("data-testid", "token");
    label.append(input);
    const button = document.createElement("button");
    button.type = "submit";
    button.textContent = "Use this token";
    const said = document.createElement("p");
    said.id = "token-message";
    said.className = "definition";
    said.setAttribute("data-testid", "token-message");
    form.append(said, label, " ", button);
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
