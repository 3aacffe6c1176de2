/* workers.enrichment._lookups: enrichment's per-activity loops in C (reference: workers/enrichment/lookups.py).
 *
 * Enrichment decides per distinct value (a target, a user agent, an identity); these loops apply the
 * decisions to every activity of a batch: dictionary reads, the identity walk in batch order, and the
 * concatenation of each activity's fields. They take and return plain Python objects and behave as the
 * pure-Python functions of workers/enrichment/lookups.py do, which the tests check on random batches. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* The key of item `k` of `keys` for `columns`: k[c] for one column and no prefix, else the tuple
 * (prefix?, k[c0], k[c1], ...). Returns a new reference. */
static PyObject *make_key(PyObject *item, const Py_ssize_t *cols, Py_ssize_t ncols, PyObject *prefix)
{
    PyObject *key;
    Py_ssize_t i, at = 0;
    if (!PyTuple_Check(item)) {
        PyErr_SetString(PyExc_TypeError, "lookup: every key must be a tuple");
        return NULL;
    }
    for (i = 0; i < ncols; i++) {
        if (cols[i] >= PyTuple_GET_SIZE(item)) {
            PyErr_SetString(PyExc_IndexError, "lookup: a column is past the end of a key");
            return NULL;
        }
    }
    if (ncols == 1 && prefix == Py_None) {
        key = PyTuple_GET_ITEM(item, cols[0]);
        Py_INCREF(key);
        return key;
    }
    key = PyTuple_New(ncols + (prefix != Py_None));
    if (!key)
        return NULL;
    if (prefix != Py_None) {
        Py_INCREF(prefix);
        PyTuple_SET_ITEM(key, at++, prefix);
    }
    for (i = 0; i < ncols; i++) {
        PyObject *v = PyTuple_GET_ITEM(item, cols[i]);
        Py_INCREF(v);
        PyTuple_SET_ITEM(key, at++, v);
    }
    return key;
}

PyDoc_STRVAR(lookup_doc,
             "lookup(table, keys, columns, prefix, now, missing) -> (values, misses)\n\n"
             "See workers.enrichment.lookups.lookup.");

static PyObject *lu_lookup(PyObject *self, PyObject *args)
{
    PyObject *table, *keys, *columns, *prefix, *now_obj, *missing;
    PyObject *values = NULL, *misses = NULL, *result = NULL;
    Py_ssize_t cols[8], ncols, n, i;
    double now = 0.0;
    int expiring;

    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!O!OOO:lookup", &PyDict_Type, &table, &PyList_Type, &keys,
                          &PyTuple_Type, &columns, &prefix, &now_obj, &missing))
        return NULL;
    ncols = PyTuple_GET_SIZE(columns);
    if (ncols < 1 || ncols > 8) {
        PyErr_SetString(PyExc_ValueError, "lookup: between 1 and 8 columns");
        return NULL;
    }
    for (i = 0; i < ncols; i++) {
        cols[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(columns, i));
        if (cols[i] == -1 && PyErr_Occurred())
            return NULL;
        if (cols[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "lookup: columns must not be negative");
            return NULL;
        }
    }
    expiring = now_obj != Py_None;
    if (expiring) {
        now = PyFloat_AsDouble(now_obj);
        if (now == -1.0 && PyErr_Occurred())
            return NULL;
    }
    n = PyList_GET_SIZE(keys);
    values = PyList_New(n);
    misses = PyDict_New();
    if (!values || !misses)
        goto fail;
    for (i = 0; i < n; i++) {
        PyObject *key, *entry, *value = NULL, *positions, *index;
        key = make_key(PyList_GET_ITEM(keys, i), cols, ncols, prefix);
        if (!key)
            goto fail;
        entry = PyDict_GetItemWithError(table, key); /* borrowed */
        if (!entry && PyErr_Occurred()) {
            Py_DECREF(key);
            goto fail;
        }
        if (entry && expiring) {
            double expires;
            if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 2) {
                Py_DECREF(key);
                PyErr_SetString(PyExc_TypeError, "lookup: an expiring entry must be (expires, value)");
                goto fail;
            }
            expires = PyFloat_AsDouble(PyTuple_GET_ITEM(entry, 0));
            if (expires == -1.0 && PyErr_Occurred()) {
                Py_DECREF(key);
                goto fail;
            }
            value = expires > now ? PyTuple_GET_ITEM(entry, 1) : NULL;
        } else {
            value = entry;
        }
        if (value) {
            Py_DECREF(key);
            Py_INCREF(value);
            PyList_SET_ITEM(values, i, value);
            continue;
        }
        Py_INCREF(missing);
        PyList_SET_ITEM(values, i, missing);
        positions = PyDict_GetItemWithError(misses, key); /* borrowed */
        if (!positions) {
            if (PyErr_Occurred()) {
                Py_DECREF(key);
                goto fail;
            }
            positions = PyList_New(0);
            if (!positions || PyDict_SetItem(misses, key, positions) < 0) {
                Py_XDECREF(positions);
                Py_DECREF(key);
                goto fail;
            }
            Py_DECREF(positions); /* the dict holds it */
        }
        Py_DECREF(key);
        index = PyLong_FromSsize_t(i);
        if (!index || PyList_Append(positions, index) < 0) {
            Py_XDECREF(index);
            goto fail;
        }
        Py_DECREF(index);
    }
    result = PyTuple_Pack(2, values, misses);
fail:
    Py_XDECREF(values);
    Py_XDECREF(misses);
    return result;
}

/* Fields of an enrichment key tuple (core.fastpath.EnrichmentKeys). */
enum { K_USER_ID = 2, K_ANONYMOUS_ID = 3, K_SESSION_ID = 4, K_MIN_SIZE = 5 };

static int nonempty(PyObject *s)
{
    return PyUnicode_Check(s) ? PyUnicode_GET_LENGTH(s) > 0 : PyObject_IsTrue(s);
}

/* links[key] = user, and the change recorded, when links does not hold it already. */
static int set_link(PyObject *links, PyObject *kind, PyObject *key, PyObject *user, PyObject *changes)
{
    PyObject *known, *change;
    int same;
    known = PyDict_GetItemWithError(links, key); /* borrowed */
    if (!known && PyErr_Occurred())
        return -1;
    if (known) {
        same = PyObject_RichCompareBool(known, user, Py_EQ);
        if (same < 0)
            return -1;
        if (same)
            return 0;
    }
    if (PyDict_SetItem(links, key, user) < 0)
        return -1;
    change = PyTuple_Pack(3, kind, key, user);
    if (!change)
        return -1;
    if (PyList_Append(changes, change) < 0) {
        Py_DECREF(change);
        return -1;
    }
    Py_DECREF(change);
    return 0;
}

PyDoc_STRVAR(stitch_doc,
             "stitch(keys, anonymous, sessions, anonymous_kind, session_kind)\n"
             "    -> (resolved, changes, enriched, unknown)\n\n"
             "See workers.enrichment.lookups.stitch.");

static PyObject *lu_stitch(PyObject *self, PyObject *args)
{
    PyObject *keys, *anonymous, *sessions, *anonymous_kind, *session_kind;
    PyObject *resolved = NULL, *changes = NULL, *empty = NULL, *result = NULL;
    Py_ssize_t n, i, enriched = 0, unknown = 0;

    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!O!OO:stitch", &PyList_Type, &keys, &PyDict_Type, &anonymous,
                          &PyDict_Type, &sessions, &anonymous_kind, &session_kind))
        return NULL;
    n = PyList_GET_SIZE(keys);
    resolved = PyList_New(n);
    changes = PyList_New(0);
    empty = PyUnicode_FromStringAndSize("", 0);
    if (!resolved || !changes || !empty)
        goto fail;
    for (i = 0; i < n; i++) {
        PyObject *k = PyList_GET_ITEM(keys, i), *user, *anon, *session, *linked = NULL;
        int has_user, has_anon, has_session;
        if (!PyTuple_Check(k) || PyTuple_GET_SIZE(k) < K_MIN_SIZE) {
            PyErr_SetString(PyExc_TypeError, "stitch: every key must be an enrichment key tuple");
            goto fail;
        }
        user = PyTuple_GET_ITEM(k, K_USER_ID);
        anon = PyTuple_GET_ITEM(k, K_ANONYMOUS_ID);
        session = PyTuple_GET_ITEM(k, K_SESSION_ID);
        if ((has_user = nonempty(user)) < 0 || (has_anon = nonempty(anon)) < 0 ||
            (has_session = nonempty(session)) < 0)
            goto fail;
        if (has_user) {
            Py_INCREF(user);
            PyList_SET_ITEM(resolved, i, user);
            if (has_anon && set_link(anonymous, anonymous_kind, anon, user, changes) < 0)
                goto fail;
            if (has_session && set_link(sessions, session_kind, session, user, changes) < 0)
                goto fail;
            continue;
        }
        if (has_anon) {
            linked = PyDict_GetItemWithError(anonymous, anon);
            if (!linked && PyErr_Occurred())
                goto fail;
        }
        if ((!linked || !nonempty(linked)) && has_session) {
            linked = PyDict_GetItemWithError(sessions, session);
            if (!linked && PyErr_Occurred())
                goto fail;
        }
        if (!linked)
            linked = empty;
        if (has_anon || has_session) {
            if (nonempty(linked))
                enriched++;
            else
                unknown++;
        }
        Py_INCREF(linked);
        PyList_SET_ITEM(resolved, i, linked);
    }
    result = Py_BuildValue("(OOnn)", resolved, changes, enriched, unknown);
fail:
    Py_XDECREF(resolved);
    Py_XDECREF(changes);
    Py_XDECREF(empty);
    return result;
}

PyDoc_STRVAR(join_doc, "join(columns, tables) -> list of bytes\n\nSee workers.enrichment.lookups.join.");

static PyObject *lu_join(PyObject *self, PyObject *args)
{
    PyObject *columns, *tables, *out = NULL;
    Py_ssize_t ncols, n = -1, i, j;
    PyObject *cols[8], *maps[8];

    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!:join", &PyTuple_Type, &columns, &PyTuple_Type, &tables))
        return NULL;
    ncols = PyTuple_GET_SIZE(columns);
    if (ncols < 1 || ncols > 8 || PyTuple_GET_SIZE(tables) != ncols) {
        PyErr_SetString(PyExc_ValueError, "join: 1 to 8 columns, and one table (or None) per column");
        return NULL;
    }
    for (j = 0; j < ncols; j++) {
        cols[j] = PyTuple_GET_ITEM(columns, j);
        maps[j] = PyTuple_GET_ITEM(tables, j);
        if (!PyList_Check(cols[j]) || (maps[j] != Py_None && !PyDict_Check(maps[j]))) {
            PyErr_SetString(PyExc_TypeError, "join: columns are lists, tables dicts or None");
            return NULL;
        }
        if (n >= 0 && PyList_GET_SIZE(cols[j]) != n) {
            PyErr_SetString(PyExc_ValueError, "join: the columns differ in length");
            return NULL;
        }
        n = PyList_GET_SIZE(cols[j]);
    }
    out = PyList_New(n);
    if (!out)
        return NULL;
    for (i = 0; i < n; i++) {
        PyObject *parts[8], *b;
        Py_ssize_t size = 0;
        char *at;
        for (j = 0; j < ncols; j++) {
            PyObject *v = PyList_GET_ITEM(cols[j], i);
            if (maps[j] != Py_None) {
                v = PyDict_GetItemWithError(maps[j], v);
                if (!v && PyErr_Occurred())
                    goto fail;
            }
            parts[j] = v && PyBytes_Check(v) ? v : NULL;
            if (parts[j])
                size += PyBytes_GET_SIZE(parts[j]);
        }
        b = PyBytes_FromStringAndSize(NULL, size);
        if (!b)
            goto fail;
        at = PyBytes_AS_STRING(b);
        for (j = 0; j < ncols; j++) {
            if (parts[j]) {
                memcpy(at, PyBytes_AS_STRING(parts[j]), (size_t)PyBytes_GET_SIZE(parts[j]));
                at += PyBytes_GET_SIZE(parts[j]);
            }
        }
        PyList_SET_ITEM(out, i, b);
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef methods[] = {
    {"lookup", lu_lookup, METH_VARARGS, lookup_doc},
    {"stitch", lu_stitch, METH_VARARGS, stitch_doc},
    {"join", lu_join, METH_VARARGS, join_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "workers.enrichment._lookups",
    "Enrichment's per-activity loops in C; the reference is workers.enrichment.lookups.",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__lookups(void)
{
    return PyModule_Create(&module);
}
