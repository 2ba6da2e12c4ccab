// the heatmap tiles (one HTML block): a click enlarges a tile, its button saves it as a PNG
// named after its token. A gr.HTML js_on_load body: `element` is the component's root.
element.addEventListener('click', (e) => {
  const fig = e.target.closest('.uv-tile');
  if (!fig) return;
  const img = fig.querySelector('img');
  if (e.target.closest('.uv-save')) {
    const a = document.createElement('a');
    const name = fig.querySelector('figcaption').textContent.trim();
    a.href = img.src;
    a.download = 'heatmap-' + name.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-|-$/g, '') + '.' + img.src.slice(11, img.src.indexOf(';'));
    a.click();
  } else if (e.target === img) {
    fig.classList.toggle('uv-big');
  }
});
