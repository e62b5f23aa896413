// The echo page: one WebSocket to /ws/echo, and the conversation on it.
// With ?demo in the address the page sends a few messages by itself, so a
// headless browser can check the whole round trip.
document.addEventListener("DOMContentLoaded", () => {
  const connection = document.getElementById("connection");
  const form = document.getElementById("send");
  const input = document.getElementById("message");
  const button = form.querySelector("button");
  const conversation = document.getElementById("conversation");

  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/ws/echo`);

  function show(who, text) {
    const item = document.createElement("li");
    item.className = who;
    item.textContent = text;
    conversation.append(item);
  }

  function setState(state, text) {
    connection.dataset.state = state;
    connection.textContent = text;
  }

  const demo = new URLSearchParams(location.search).has("demo");
  const demoMessages = ["hello, sandbox", "ünïcödé ✓ 🦀", "third and last"];
  let echoed = 0;

  socket.addEventListener("open", () => {
    setState("open", "Connected to /ws/echo.");
    button.disabled = false;
    if (demo) {
      for (const text of demoMessages) {
        show("sent", text);
        socket.send(text);
      }
    }
  });

  socket.addEventListener("message", (event) => {
    show("received", event.data);
    echoed += 1;
    if (demo && echoed === demoMessages.length) {
      const all = [...conversation.querySelectorAll(".received")].map((li) => li.textContent);
      const same = all.every((text, i) => text === demoMessages[i]);
      document.body.dataset.echo = same ? "ok" : "mismatch";
    }
  });

  socket.addEventListener("close", (event) => {
    setState("closed", `Closed (${event.code}${event.reason ? ": " + event.reason : ""}).`);
    button.disabled = true;
  });

  socket.addEventListener("error", () => {
    setState("error", "The connection failed.");
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value;
    if (!text || socket.readyState !== WebSocket.OPEN) return;
    show("sent", text);
    socket.send(text);
    input.value = "";
    input.focus();
  });
});
