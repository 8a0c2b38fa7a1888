import { app } from "./app.js";

app.setup().catch((error) => {
  const box = document.getElementById("fatal");
  box.textContent = `The editor could not start: ${error.message}`;
  box.hidden = false;
  throw error;
});
