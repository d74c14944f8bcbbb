// The login page: opens a session (POST /api/v1/login), then goes where the user was headed.
document.getElementById("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const error = document.getElementById("login-error");
  error.hidden = true;
  const response = await fetch("/api/v1/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    credentials: "same-origin",
    body: JSON.stringify({ username: form.username.value, password: form.password.value }),
  });
  if (response.ok) {
    location.href = form.dataset.next || "/ui/";
    return;
  }
  const body = await response.json().catch(() => ({}));
  error.textContent = body.message || "Sign-in failed";
  error.hidden = false;
  form.password.select();
});
