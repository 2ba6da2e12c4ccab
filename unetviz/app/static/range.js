// the two-ended step range: both ends move, the lower never passes the upper; a release
// sends {lo, hi, max} as an `input` event (the user's), not `change`: gradio also fires
// `change` when a Run sets a new range, before the page holds the new tokens and resolutions,
// and the re-aggregation would then send the old ones. A gr.HTML js_on_load body (`element`,
// `props`, `trigger`).
const ends = () => [element.querySelector('input.lo'), element.querySelector('input.hi')];
element.addEventListener('input', (e) => {
  const [lo, hi] = ends();
  if (!lo || !hi) return;
  if (+lo.value > +hi.value) { if (e.target === lo) hi.value = lo.value; else lo.value = hi.value; }
  element.querySelector('.uv-range-text').textContent = lo.value + '–' + hi.value;
});
element.addEventListener('change', () => {
  const [lo, hi] = ends();
  props.value = {lo: +lo.value, hi: +hi.value, max: props.value.max};
  trigger('input');
});
