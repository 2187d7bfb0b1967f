// A shared todo list on replikativ: served by the node itself (`replikativ serve --web examples/web`),
// it connects to the websocket on the same port. Open the printed link in two windows: edits show up
// live in both, edits made offline (or while the node is down) sync on reconnect, and two edits of
// one todo made at once are both kept and shown as a conflict until someone edits it again.
//
// URL parameters: list=USER/UUID (the list to open; without it a new one is made), user=mail:...,
// db=NAME (the IndexedDB database), offline=1 (do not connect).
import { Stage } from "./lib/src/index.web.js";

const params = new URLSearchParams(location.search);
const user = params.get("user") ?? `mail:guest-${crypto.randomUUID().slice(0, 8)}@example.org`;
const stage = await Stage.create({ user, store: "indexeddb", name: params.get("db") ?? "replikativ-todo" });

let list = params.get("list");
if (!list) {
  list = await stage.ormap.create();
  params.set("list", list);
  history.replaceState(null, "", `?${params}`);
} else if (!stage.has(list)) {
  await stage.subscribe(list);
}
const shareUrl = new URL(location.href);
shareUrl.searchParams.delete("user");
document.querySelector("#share").textContent = `Share: ${shareUrl}`;

const $status = document.querySelector("#status");
const showStatus = (s) => {
  $status.dataset.state = s.state;
  $status.textContent = `${s.state}${s.pending ? `, ${s.pending} edit${s.pending > 1 ? "s" : ""} not yet on the server` : ""}`;
};
stage.onConnectionState(showStatus);
showStatus(stage.connectionState());

/** The list as `{key: [{text, done}, ...]}`: several values under a key are a conflict. */
function read() {
  const todos = {};
  if (!stage.has(list)) return todos;
  for (const key of stage.ormap.keys(list)) {
    todos[key] = stage.ormap.get(list, key).map((c) => ({ commit: c.id, ...c.transactions.at(-1)[1] }));
  }
  return todos;
}

const $todos = document.querySelector("#todos");
function render() {
  // A list opened by its link arrives from the node: until then there is nothing to edit.
  document.querySelector("#add button").disabled = !stage.has(list);
  const todos = read();
  window.__state = todos;
  $todos.replaceChildren(
    ...Object.entries(todos).map(([key, values]) => {
      const li = document.createElement("li");
      li.dataset.key = key;
      const [first] = values;
      li.classList.toggle("done", values.every((v) => v.done));
      li.classList.toggle("conflict", values.length > 1);
      const box = document.createElement("input");
      box.type = "checkbox";
      box.checked = first.done;
      box.onchange = () => toggle(key);
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = first.text;
      li.append(box, text);
      if (values.length > 1) {
        const v = document.createElement("span");
        v.className = "values";
        v.textContent = `conflict: ${values.map((x) => `${x.text}${x.done ? " ✓" : ""}`).join(" | ")}`;
        li.append(v);
      }
      const del = document.createElement("button");
      del.textContent = "✕";
      del.onclick = () => stage.ormap.dissoc(list, key);
      li.append(del);
      return li;
    }),
  );
}

async function add(text) {
  return stage.ormap.assoc(list, crypto.randomUUID(), [["todo", { text, done: false }]]);
}

/** Flips a todo; `put` replaces every value seen here, so it also resolves a conflict. */
async function toggle(key, text) {
  const [first] = read()[key];
  return stage.ormap.put(list, key, [["todo", { text: text ?? first.text, done: !first.done }]]);
}

document.querySelector("#add").onsubmit = async (e) => {
  e.preventDefault();
  const input = document.querySelector("#text");
  await add(input.value);
  input.value = "";
};

stage.onChange(list, render);
render();
if (params.get("offline") !== "1") stage.connect(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`);

// For the tests (and the console).
window.__app = { stage, list, add, toggle, read, ready: true };
